"""Acceptance 4: the runner prints only report lines (service logs, prints and tracebacks of a
module go to its log file), ends with the table and writes the results file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

NOISY = """
import logging, sys
import structlog
from bench._report import record

def main():
    structlog.get_logger("stockade.test").info("service_log_line", detail="noise")
    logging.getLogger("sqlalchemy.pool").error("Exception during reset or similar")
    print("progress printed by the module")
    sys.stderr.write("Traceback (most recent call last): stderr noise\\n")
    record("tiny thing", value="2.0 ms", anchor="1.0 ms", ratio=2.0, goal="<= 3x", met=True)
    record("tiny other", value="5/s")
"""

FAILING = """
def main():
    print("about to fail")
    raise RuntimeError("boom in the module")
"""


def test_runner_prints_only_the_report(tmp_path: Path) -> None:
    (tmp_path / "bench_tiny.py").write_text(NOISY)
    (tmp_path / "bench_broken.py").write_text(FAILING)
    out = tmp_path / "results.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench"],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "STOCKADE_BENCH_DIR": str(tmp_path),
             "STOCKADE_BENCH_OUT": str(out), "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 1  # the broken module fails the run
    lines = result.stdout.splitlines()
    for noise in ("service_log_line", "Exception during reset", "progress printed", "Traceback",
                  "boom in the module", "about to fail"):  # fmt: skip
        assert noise not in result.stdout
    table = lines.index("== report ==")
    for line in lines[:table]:
        assert not line or line.startswith(("== ", "   ")), line
    assert "   tiny thing: 2.0 ms | anchor 1.0 ms | 2.00x | goal <= 3x met" in lines
    assert lines[table + 1].split() == ["module", "benchmark", "value", "anchor", "ratio", "goal",
                                        "met?"]  # fmt: skip
    assert [line.split()[0] for line in lines[table + 2 :]] == ["tiny", "tiny", "failed:"]
    assert lines[-1] == "failed: broken"
    rows = json.loads(out.read_text())
    assert [(r["module"], r["benchmark"], r["met"]) for r in rows] == [
        ("tiny", "tiny thing", True),
        ("tiny", "tiny other", None),
    ]
    log = (tmp_path / "logs" / "tiny.log").read_text()
    assert "service_log_line" in log
    assert "progress printed" in log
    assert "boom in the module" in (tmp_path / "logs" / "broken.log").read_text()


def test_an_unknown_module_is_one_line_and_exit_2(tmp_path: Path) -> None:
    (tmp_path / "bench_tiny.py").write_text(NOISY)
    result = subprocess.run(
        [sys.executable, "-m", "bench", "nosuch"], cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "STOCKADE_BENCH_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "no benchmark module nosuch" in result.stderr


SEES_PATH = """
import sys
from bench._report import record

def main():
    import shadowed  # only in the caller's PYTHONPATH
    record("path", value=shadowed.WHERE)
"""


def test_a_module_imports_from_the_callers_pythonpath_first(tmp_path: Path) -> None:
    # a worktree's bench run with PYTHONPATH=$PWD/src measures that tree's code, not the
    # editable install's: the runner keeps the caller's PYTHONPATH ahead of the repository
    (tmp_path / "bench_where.py").write_text(SEES_PATH)
    own = tmp_path / "own"
    own.mkdir()
    (own / "shadowed.py").write_text("WHERE = 'callers'\n")
    out = tmp_path / "results.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench"], cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "STOCKADE_BENCH_DIR": str(tmp_path),
             "STOCKADE_BENCH_OUT": str(out), "PYTHONPATH": f"{own}:{ROOT}"},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, (tmp_path / "logs" / "where.log").read_text()
    assert [r["value"] for r in json.loads(out.read_text())] == ["callers"]

"""Runs every benchmark module in bench/ (``bench_*.py``) and prints one report.

Each module has ``main() -> None`` (or an ``async def main``) that measures its subject and its
named anchor in the same run and reports each figure with :func:`bench._report.record`.
Pass module names to run a subset: ``python -m bench authz identity`` (``make bench ARGS=...``).

Every module runs in its own process with a time limit (``STOCKADE_BENCH_TIMEOUT`` seconds,
default 600), so one module's leftovers (threads, servers, a stuck shutdown) neither skew nor
stall the next, and ``make bench`` always ends. A module's own output (service logs, progress,
tracebacks) goes to ``bench/logs/<module>.log``, never to the terminal: the terminal gets the
module's report rows as it finishes, then one table, and ``bench/results.json`` gets the rows.
``STOCKADE_BENCH_DIR`` runs the modules of another directory (the runner's own test).
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import _report

TIMEOUT = float(os.environ.get("STOCKADE_BENCH_TIMEOUT", "600"))
HERE = Path(__file__).resolve().parent


def _modules_dir() -> Path:
    return Path(os.environ.get("STOCKADE_BENCH_DIR") or HERE)


def run_one(short: str) -> None:
    """Run ``bench_<short>.main`` in this process."""
    path = _modules_dir() / f"bench_{short}.py"
    if path.parent == HERE:
        module = importlib.import_module(f"bench.bench_{short}")
    else:
        spec = importlib.util.spec_from_file_location(f"bench_{short}", path)
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    result = module.main()
    if inspect.isawaitable(result):
        asyncio.run(result)  # type: ignore[arg-type]


def main() -> int:
    if sys.argv[1:2] == ["--one"]:
        run_one(sys.argv[2])
        return 0
    here = _modules_dir()
    wanted = set(sys.argv[1:])
    names = sorted(p.stem.removeprefix("bench_") for p in here.glob("bench_*.py"))
    unknown = sorted(wanted - set(names))
    if unknown:
        print(f"no benchmark module {', '.join(unknown)} (have: {', '.join(names)})",
              file=sys.stderr)  # fmt: skip
        return 2
    failed = []
    logs = here / "logs"
    logs.mkdir(exist_ok=True)
    rows_file = Path(tempfile.mkstemp(prefix="stockade-bench-", suffix=".jsonl")[1])
    seen = 0
    for short in names:
        if wanted and short not in wanted:
            continue
        print(f"== {short} ==", flush=True)
        started = time.perf_counter()
        # the caller's PYTHONPATH first (a worktree's src/ measures that tree's code, not the
        # editable install's), then the repository (for ``bench``)
        path = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(HERE.parent)) if p)
        env = {**os.environ, _report.RESULTS_ENV: str(rows_file), "STOCKADE_BENCH_MODULE": short,
               "PYTHONPATH": path}  # fmt: skip
        log = logs / f"{short}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "bench", "--one", short], start_new_session=True, env=env,
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=HERE.parent,
            )  # fmt: skip
            try:
                code = proc.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # the module and whatever servers it started
                proc.wait()
                print(f"   {short}: stopped after {TIMEOUT:.0f}s (STOCKADE_BENCH_TIMEOUT)",
                      flush=True)  # fmt: skip
                code = 124
        rows = _rows(rows_file)
        for row in rows[seen:]:
            print(_report.format_row(_report.Row(**row)), flush=True)
        seen = len(rows)
        if code != 0:
            failed.append(short)
            print(f"   {short}: exit status {code}; see {_shown(log)}", flush=True)
        print(f"   ({time.perf_counter() - started:.1f}s, log {_shown(log)})", flush=True)
    rows = _rows(rows_file)
    rows_file.unlink()
    _print_table(rows)
    out_path = Path(os.environ.get("STOCKADE_BENCH_OUT") or here / "results.json")
    out_path.write_text(json.dumps(rows, indent=2) + "\n")
    if failed:
        print(f"failed: {', '.join(failed)}", flush=True)
    return 1 if failed else 0


def _rows(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _print_table(rows: list[dict[str, object]]) -> None:
    header = ["module", "benchmark", "value", "anchor", "ratio", "goal", "met?"]
    table = [header]
    for row in rows:
        ratio = row["ratio"]
        met = {True: "yes", False: "NO", None: "-"}[row["met"]]  # type: ignore[index]
        table.append([str(row["module"]), str(row["benchmark"]), str(row["value"]),
                      str(row["anchor"] or "-"), "-" if ratio is None else f"{ratio:.2f}x",
                      str(row["goal"]), met])  # fmt: skip
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    print("\n== report ==", flush=True)
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))


if __name__ == "__main__":
    raise SystemExit(main())

"""Runs every benchmark module in bench/ (``bench_*.py``) and prints its ratios.

Each module has ``main() -> None`` (or an ``async def main``) that measures its subject and its
named anchor in the same run and prints lines of ``name: value (ratio vs anchor)``.
Pass module names to run a subset: ``python -m bench authz identity``.

Every module runs in its own process with a time limit (``STOCKADE_BENCH_TIMEOUT`` seconds,
default 600), so one module's leftovers (threads, servers, a stuck shutdown) neither skew nor
stall the next, and ``make bench`` always ends.
"""

from __future__ import annotations

import asyncio
import importlib
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


def run_one(short: str) -> None:
    """Run ``bench_<short>.main`` in this process."""
    module = importlib.import_module(f"bench.bench_{short}")
    result = module.main()
    if inspect.isawaitable(result):
        asyncio.run(result)  # type: ignore[arg-type]


def main() -> int:
    if sys.argv[1:2] == ["--one"]:
        run_one(sys.argv[2])
        return 0
    here = Path(__file__).parent
    wanted = set(sys.argv[1:])
    names = sorted(p.stem.removeprefix("bench_") for p in here.glob("bench_*.py"))
    failed = []
    rows_file = Path(tempfile.mkstemp(prefix="stockade-bench-", suffix=".jsonl")[1])
    for short in names:
        if wanted and short not in wanted:
            continue
        print(f"== {short} ==", flush=True)
        started = time.perf_counter()
        env = {**os.environ, _report.RESULTS_ENV: str(rows_file), "STOCKADE_BENCH_MODULE": short}
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench", "--one", short], start_new_session=True, env=env
        )
        try:
            code = proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the module and whatever servers it started
            proc.wait()
            print(f"   {short}: stopped after {TIMEOUT:.0f}s (STOCKADE_BENCH_TIMEOUT)", flush=True)
            code = 124
        if code != 0:
            failed.append(short)
        print(f"   ({time.perf_counter() - started:.1f}s)", flush=True)
    rows = [json.loads(line) for line in rows_file.read_text().splitlines() if line.strip()]
    rows_file.unlink()
    _print_table(rows)
    (here / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    if failed:
        print(f"failed: {', '.join(failed)}", flush=True)
    return 1 if failed else 0


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

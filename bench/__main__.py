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
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

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
    for short in names:
        if wanted and short not in wanted:
            continue
        print(f"== {short} ==", flush=True)
        started = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench", "--one", short], start_new_session=True
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
    if failed:
        print(f"failed: {', '.join(failed)}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Runs every benchmark module in bench/ (``bench_*.py``) and prints its ratios.

Each module has ``main() -> None`` (or an ``async def main``) that measures its subject and its
named anchor in the same run and prints lines of ``name: value (ratio vs anchor)``.
Pass module names to run a subset: ``python -m bench authz identity``.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import sys
import time
from pathlib import Path


def main() -> int:
    here = Path(__file__).parent
    wanted = set(sys.argv[1:])
    names = sorted(p.stem for p in here.glob("bench_*.py"))
    for name in names:
        short = name.removeprefix("bench_")
        if wanted and short not in wanted:
            continue
        module = importlib.import_module(f"bench.{name}")
        print(f"== {short} ==", flush=True)
        started = time.perf_counter()
        result = module.main()
        if inspect.isawaitable(result):
            asyncio.run(result)  # type: ignore[arg-type]
        print(f"   ({time.perf_counter() - started:.1f}s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

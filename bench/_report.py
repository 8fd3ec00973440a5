"""One row of the benchmark report: what every ``bench_*.py`` module calls for each figure.

:func:`record` prints the row at once and, under ``python -m bench``, appends it as a JSON line to
the file named by ``STOCKADE_BENCH_RESULTS``; the runner reads those rows back, prints one table
at the end (benchmark, value, anchor, ratio, goal, met?) and writes ``bench/results.json``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

__all__ = ["Row", "format_row", "record"]

#: Where rows go while ``python -m bench`` runs (set by the runner for each module).
RESULTS_ENV = "STOCKADE_BENCH_RESULTS"


@dataclass(frozen=True)
class Row:
    module: str
    benchmark: str
    value: str
    anchor: str
    ratio: float | None
    goal: str
    met: bool | None


def record(
    benchmark: str,
    *,
    value: str,
    anchor: str = "",
    ratio: float | None = None,
    goal: str = "measure",
    met: bool | None = None,
    module: str = "",
) -> Row:
    """Report one figure: ``value`` measured against ``anchor`` in the same run, ``ratio`` as
    value / anchor (or the issue's own direction, stated in ``goal``), ``met`` when a goal is
    set (``None`` for figures that are only measured)."""
    row = Row(module or os.environ.get("STOCKADE_BENCH_MODULE", ""), benchmark, value, anchor,
              ratio, goal, met)  # fmt: skip
    print(format_row(row), flush=True)
    path = os.environ.get(RESULTS_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps(asdict(row)) + "\n")
    return row


def format_row(row: Row) -> str:
    """One report line: ``   benchmark: value | anchor A | ratio | goal G met``."""
    shown = f"{row.ratio:.2f}x" if row.ratio is not None else "-"
    verdict = {True: "met", False: "MISSED", None: ""}[row.met]
    return (f"   {row.benchmark}: {row.value} | anchor {row.anchor or '-'} | {shown} | "
            f"goal {row.goal} {verdict}").rstrip()  # fmt: skip

"""What every command shares: settings, error mapping, output in table or JSON form.

Conventions (docs/architecture.md): errors go to stderr as one line; exit code 2 for bad input
(:class:`~stockade.core.errors.UserError`), 1 for a failed check or a backend failure;
``list``/``show`` commands take ``--json`` with stable snake_case field names.
"""

from __future__ import annotations

import asyncio
import functools
import json
import sys
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from stockade.core import Settings, StockadeError, load_settings
from stockade.core.logging import configure_logging

__all__ = [
    "JSON_OPTION",
    "console",
    "err_console",
    "fail",
    "handle_errors",
    "print_json",
    "print_table",
    "read_text_arg",
    "run_async",
    "settings",
]

P = ParamSpec("P")
T = TypeVar("T")

console = Console()
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

JSON_OPTION = typer.Option(False, "--json", help="Print JSON (stable snake_case fields).")


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``message`` as one stderr line and return the Exit to raise."""
    err_console.print(f"error: {message}", markup=False)
    return typer.Exit(code)


def handle_errors(func: Callable[P, T]) -> Callable[P, T]:
    """Map :class:`StockadeError` to one stderr line and its exit code."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return func(*args, **kwargs)
        except StockadeError as exc:
            raise fail(str(exc), exc.exit_code) from None

    return wrapper


def run_async(coro: Awaitable[T]) -> T:
    """Run ``coro`` to completion in a fresh event loop."""

    async def _main() -> T:
        return await coro

    return asyncio.run(_main())


@functools.cache
def settings() -> Settings:
    """The validated settings tree (once per process).

    One-shot commands log warnings and errors only (stderr); ``stockade up`` calls
    :func:`configure_logging` again with the configured level.
    """
    loaded = load_settings()
    quiet = "warning" if loaded.log.level in {"debug", "info"} else loaded.log.level
    configure_logging(quiet, loaded.log.json_output)
    return loaded


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def print_json(data: Any) -> None:
    """Write ``data`` as indented JSON to stdout."""
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=_default) + "\n")


def print_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Render a rich table of ``rows`` under ``columns``."""
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*("" if cell is None else str(cell) for cell in row))
    console.print(table)


def read_text_arg(value: str, *, field: str) -> str:
    """Read a ``FILE`` or ``-`` (stdin) argument; a missing file is an InvalidInput."""
    from stockade.core import InvalidInput

    if value == "-":
        return sys.stdin.read()
    path = Path(value)
    try:
        return path.read_text()
    except OSError as exc:
        raise InvalidInput(field, f"cannot read {path}: {exc.strerror}") from exc

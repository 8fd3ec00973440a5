"""What every command shares: settings, error mapping, output in table or JSON form.

Conventions (docs/architecture.md): errors go to stderr as one line; exit code 2 for bad input
(:class:`~stockade.core.errors.UserError`), 1 for a failed check or a backend failure;
``list``/``show`` commands take ``--json`` with stable snake_case field names.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import sys
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from stockade.core import InvalidInput, Settings, StockadeError, load_settings
from stockade.core.logging import configure_logging

__all__ = [
    "JSON_OPTION",
    "console",
    "describe_os_error",
    "err_console",
    "fail",
    "handle_errors",
    "print_json",
    "print_table",
    "read_text_arg",
    "reader_may_stop",
    "resolve_prefix",
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
    """Map :class:`StockadeError` to one stderr line and its exit code.

    The last guard against a traceback: an ``OSError`` (a file that cannot be read or written),
    a ``UnicodeError`` (bytes that are not UTF-8 text) or a ``RecursionError`` (input nested
    too deeply) that escaped its command is one line too, naming the file when known, exit 2.
    """

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return func(*args, **kwargs)
        except StockadeError as exc:
            raise fail(str(exc), exc.exit_code) from None
        except OSError as exc:
            raise fail(describe_os_error(exc)) from None
        except UnicodeError as exc:
            raise fail(f"not UTF-8 text: {exc}") from None
        except RecursionError:
            raise fail("input is nested too deeply") from None

    return wrapper


def describe_os_error(exc: OSError) -> str:
    """``FILE: reason`` for an OSError (``exc.filename`` when it names one)."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.filename is not None:
        return f"{exc.filename}: {reason}"
    return reason


def resolve_prefix(prefix: str, candidates: Iterable[str], *, kind: str) -> str:
    """The one candidate equal to ``prefix``, else the only one starting with it.

    No match is a :class:`NotFound` (exit 2); several are an :class:`InvalidInput` (exit 2) that
    lists them whole. Used by every command that takes an id or fingerprint.
    """
    from stockade.core import InvalidInput, NotFound

    pool = list(dict.fromkeys(candidates))
    if prefix in pool:
        return prefix
    if not prefix:
        raise InvalidInput(kind, "empty; give an id or a unique prefix of one")
    matches = [c for c in pool if c.startswith(prefix)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise NotFound(kind, prefix)
    shown = ", ".join(sorted(matches)[:20]) + (" ..." if len(matches) > 20 else "")
    raise InvalidInput(kind, f"{prefix!r} matches {len(matches)}: {shown}; give more characters")


@contextlib.contextmanager
def reader_may_stop() -> Iterator[None]:
    """Around writes to stdout: a reader that stops early (``| head``) ends the command
    quietly with exit 0, not an error (and no second one when Python flushes at exit)."""
    try:
        yield
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise typer.Exit(0) from None


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
    """Render a table of ``rows`` under ``columns``; cells wrap, never truncate.

    On a terminal long cells fold onto more lines within its width; piped, the table is as wide
    as its widest row, so ids and fingerprints stay whole on one line for ``grep`` and ``cut``.
    """
    cells = [["" if cell is None else _literal(str(cell)) for cell in row] for row in rows]
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, overflow="fold", no_wrap=False)
    for row in cells:
        table.add_row(*(Text(cell) for cell in row))  # literal text: "[secure]" is no markup
    if console.is_terminal:
        console.print(table)
        return
    widths = [len(c) for c in columns]
    for row in cells:
        for index, cell in enumerate(row[: len(widths)]):
            longest = max((len(line) for line in cell.splitlines()), default=0)
            widths[index] = max(widths[index], longest)
    needed = sum(widths) + 3 * len(widths) + 1
    wide = Console(file=sys.stdout, width=max(needed, len(title), 80), highlight=False)
    wide.print(table)


def _literal(text: str) -> str:
    """``text`` with every character a terminal would not print escaped (``\\x9d``,
    ``\\u202e``), line breaks kept: a cell never sends a control sequence or reorders the
    text after it (bidi overrides), whatever a stored value holds."""
    if text.isprintable():
        return text
    return "".join(
        c if c.isprintable() or c == "\n" else c.encode("unicode_escape").decode("ascii")
        for c in text
    )


def read_text_arg(value: str, *, field: str) -> str:
    """Read a ``FILE`` or ``-`` (stdin) argument; a missing file is an InvalidInput."""
    from stockade.core import InvalidInput

    if value == "-":
        data, where = sys.stdin.buffer.read(), "stdin"
    else:
        path = Path(value)
        try:
            data, where = path.read_bytes(), str(path)
        except OSError as exc:
            raise InvalidInput(field, f"cannot read {path}: {exc.strerror}") from exc
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(
            field,
            f"{where} is not UTF-8 text (byte {exc.start}: {data[exc.start : exc.start + 1]!r})",
        ) from None


ReuseHome = Annotated[
    bool,
    typer.Option(
        "--reuse-home", help="Hand a home left by an earlier holder of the name to the new one."
    ),
]
PurgeHome = Annotated[
    bool,
    typer.Option("--purge", help="Delete a home left by an earlier holder of the name first."),
]


def home_choice(reuse_home: bool, purge: bool) -> Literal["refuse", "reuse", "purge"]:
    """What to do with a home an earlier holder of a name left (``--reuse-home``/``--purge``)."""
    if reuse_home and purge:
        raise InvalidInput("--reuse-home/--purge", "give one of them, not both")
    return "reuse" if reuse_home else "purge" if purge else "refuse"

"""``stockade audit``: search, export and verify the audit store (read-only, on the store)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import signal
import sys
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from stockade.audit import (
    AuditQuery,
    AuditSearch,
    heads_file_for,
    key_file_for,
    load_public_key,
    verify_store,
)
from stockade.core import NotFound
from stockade.store import Store

from ._common import JSON_OPTION, console, fail, handle_errors, print_json, run_async, settings
from .sessions import find_session

__all__ = ["app"]

app = typer.Typer(help="The audit trail: search, export, verify.", no_args_is_help=True)

USER = typer.Option("--user", help="Only events of this user.")
ACTION = typer.Option("--action", help="Only this action (ssh.connect; ssh.* for a prefix).")
DECISION = typer.Option("--decision", help="Only allow or deny decisions.")
SOURCE = typer.Option("--source", help="Only events from this IP address.")
SESSION = typer.Option(
    "--session", help="Only events of this session: its id or a unique prefix of a known one."
)
SINCE = typer.Option("--since", help="From this time: a duration ago (1h, 7d) or ISO 8601.")
UNTIL = typer.Option("--until", help="Up to this time: a duration ago or ISO 8601.")


@contextlib.asynccontextmanager
async def _store() -> AsyncIterator[Store]:
    store = Store(settings().database_url)
    try:
        yield store
    finally:
        await store.close()


def _line(event: dict[str, Any]) -> str:
    return json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _safe(value: object) -> str:
    """``value`` as one line: control characters (newlines, ANSI escapes) escaped, never cut.
    Usernames and reasons come from SSH clients; a raw newline would forge a second event."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text
    )


def _summary(event: dict[str, Any]) -> str:
    details = event["event"]
    for name in ("reason", "target", "workspace", "path", "kind"):
        value = details.get(name)
        if isinstance(value, str) and value:
            return f"{name}={value}"
    return ""


def _table(events: list[dict[str, Any]]) -> None:
    """A table on a terminal (values fold, never cut); one plain line per event when piped."""
    if not sys.stdout.isatty():
        for event in events:
            sys.stdout.write(_text(event) + "\n")
        return
    table = Table(title="Audit events (newest first)", title_justify="left")
    for column in ("id", "at", "action", "user", "decision", "source", "session", "count"):
        table.add_column(column, overflow="fold")
    table.add_column("detail", overflow="fold")
    for e in events:
        cells = [e["id"], e["at"], e["action"], e["user"], e["decision"], e["source_ip"]]
        cells += [e["session_id"], e["count"], _summary(e)]
        table.add_row(*(Text("" if c is None else _safe(c)) for c in cells))
    console.print(table)


def _session_id(given: str | None) -> str | None:
    """``given`` whole, or the one session of identity's registry it is a unique prefix of;
    an id identity never had is kept as given (the audit outlives session records)."""
    if given is None:
        return None
    from ._admin import admin_identity

    async def run() -> str:
        async with admin_identity(settings()) as identity:
            try:
                return (await find_session(identity, given)).session_id
            except NotFound:
                return given

    return run_async(run())


def _resolved(query: AuditQuery) -> AuditQuery:
    """``query`` with its session named in full (checked by ``AuditQuery.parse``; on the
    command line a unique prefix may name it)."""
    if query.session_id is not None:
        query = dataclasses.replace(query, session_id=_session_id(query.session_id))
    return query


@app.command("search")
@handle_errors
def search(
    user: Annotated[str | None, USER] = None,
    action: Annotated[str | None, ACTION] = None,
    decision: Annotated[str | None, DECISION] = None,
    source: Annotated[str | None, SOURCE] = None,
    session: Annotated[str | None, SESSION] = None,
    since: Annotated[str | None, SINCE] = None,
    until: Annotated[str | None, UNTIL] = None,
    limit: Annotated[str | None, typer.Option("--limit", help="Events per page (1-1000).")] = None,
    before: Annotated[
        str | None, typer.Option("--before", help="Page cursor: only rows before this id.")
    ] = None,
    as_json: bool = JSON_OPTION,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Then print new events as they arrive.")
    ] = False,
) -> None:
    """Audit events matching every filter given, newest first (one page)."""
    query = AuditQuery.parse(
        user=user,
        action=action,
        decision=decision,
        source=source,
        session=session,
        since=since,
        until=until,
        limit=limit,
        before=before,
    )
    query = _resolved(query)

    async def run() -> None:
        async with _store() as store:
            searcher = AuditSearch(store)
            newest = await searcher.newest_id()
            page = await searcher.search(query)
            if as_json and not follow:
                print_json(page.to_json())
            elif as_json:
                for event in reversed(page.events):
                    sys.stdout.write(_line(event) + "\n")
            else:
                _table(page.events)
                if page.next_before is not None:
                    typer.echo(f"more: --before {page.next_before}", err=True)
            if follow:
                await _follow(searcher, query, newest, as_json)

    run_async(run())


async def _follow(searcher: AuditSearch, query: AuditQuery, after: int, as_json: bool) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(RuntimeError):  # not the main thread: Ctrl-C still ends it
            loop.add_signal_handler(sig, stop.set)
    show: Callable[[dict[str, Any]], str] = _line if as_json else _text
    async for event in searcher.follow(query, after=after, stop=stop):
        sys.stdout.write(show(event) + "\n")
        sys.stdout.flush()


def _text(e: dict[str, Any]) -> str:
    fields = [str(e["id"]), e["at"], e["action"], e["user"] or "-", e["decision"] or "-"]
    fields += [e["source_ip"] or "-", e["session_id"] or "-", _summary(e)]
    return "  ".join(_safe(f) for f in fields)


@app.command("export")
@handle_errors
def export(
    user: Annotated[str | None, USER] = None,
    action: Annotated[str | None, ACTION] = None,
    decision: Annotated[str | None, DECISION] = None,
    source: Annotated[str | None, SOURCE] = None,
    session: Annotated[str | None, SESSION] = None,
    since: Annotated[str | None, SINCE] = None,
    until: Annotated[str | None, UNTIL] = None,
) -> None:
    """Matching events as JSON lines, oldest first (for a SIEM): ``> audit.jsonl``."""
    query = AuditQuery.parse(
        user=user,
        action=action,
        decision=decision,
        source=source,
        session=session,
        since=since,
        until=until,
    )
    query = _resolved(query)

    async def run() -> int:
        count = 0
        async with _store() as store:
            async for event in AuditSearch(store).export(query):
                sys.stdout.write(_line(event) + "\n")
                count += 1
        return count

    count = run_async(run())
    if sys.stderr.isatty():
        typer.echo(f"exported {count} events", err=True)


@app.command("verify")
@handle_errors
def verify(as_json: bool = JSON_OPTION) -> None:
    """Check the hash chain and the signed heads; exit 1 naming the first bad row."""
    config = settings()
    heads = heads_file_for(config.audit, config.data_dir)
    public = load_public_key(key_file_for(config.audit, config.data_dir))

    async def run() -> Any:
        async with _store() as store:
            return await verify_store(store, heads, public)

    report = run_async(run())
    if as_json:
        print_json(
            {
                "ok": report.ok,
                "rows": report.rows,
                "heads": report.heads,
                "signed_through": report.signed_through,
                "unsigned": report.unsigned,
                "problem": report.problem,
                "row": report.row,
            }
        )
        if not report.ok:
            raise typer.Exit(1)
        return
    if not report.ok:
        raise fail(f"audit store tampered: {report.problem}", 1)
    typer.echo(
        f"ok: {report.rows} rows chained, {report.heads} signed heads through row "
        f"{report.signed_through}, {report.unsigned} rows not yet signed"
    )

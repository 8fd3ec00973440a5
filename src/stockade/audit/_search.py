"""Searching and exporting the audit store (read-only; what the CLI and the broker use).

Filters (all optional, combined with AND): user, action (``ssh.*`` matches a prefix), decision
(``allow``/``deny``), source IP, session id, since/until (a duration ago such as ``1h``, or an
ISO 8601 time). Results are newest first (by chain position), ``limit`` per page, and a page
names the cursor of the next one (``before``). Each result is the exported record of
``docs/audit.md`` (schema ``stockade.audit/1``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import pydantic_core
from sqlalchemy import Select, exc, func, select

from stockade.core.durations import parse_duration
from stockade.core.errors import InvalidInput, StoreUnavailable
from stockade.store import AuditEventRow, Store

from ._schema import SCHEMA, iso

__all__ = ["MAX_LIMIT", "AuditPage", "AuditQuery", "AuditSearch", "parse_time"]

#: The largest page a search returns.
MAX_LIMIT = 1000
#: The largest row id the store holds (a signed 64-bit integer in SQLite and PostgreSQL).
_MAX_ROW_ID = 2**63 - 1
_T = AuditEventRow
_COLUMNS = (
    _T.id,
    _T.stream,
    _T.stream_seq,
    _T.subject,
    _T.v,
    _T.at,
    _T.received_at,
    _T.action,
    _T.user,
    _T.decision,
    _T.source_ip,
    _T.session_id,
    _T.count,
    _T.payload,
    _T.prev_hash,
    _T.hash,
)


def _select() -> Select[Any]:
    return select(*_COLUMNS)  # type: ignore[return-value]


def parse_time(value: str, *, option: str, now: datetime | None = None) -> datetime:
    """``value`` as a time: a duration ago (``1h``, ``7d``) or ISO 8601 (naive means UTC)."""
    text = value.strip()
    now = now or datetime.now(UTC)
    try:
        return now - parse_duration(text, field=option)
    except InvalidInput:
        pass
    except OverflowError:
        raise InvalidInput(option, f"{value!r} is too far in the past") from None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+01:00: valid ISO, not representable in UTC
        raise InvalidInput(option, f"{value!r} is out of range in UTC") from None
    except ValueError:
        raise InvalidInput(
            option, f"{value!r} is neither a duration (30m, 1h, 7d) nor an ISO 8601 time"
        ) from None


def _bounded(value: str, option: str, limit: int) -> str:
    if not value or len(value) > limit or any(ord(c) < 32 for c in value):
        raise InvalidInput(option, f"must be 1 to {limit} printable characters")
    return value


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """One search; build it with :meth:`parse` from user input."""

    user: str | None = None
    action: str | None = None
    decision: Literal["allow", "deny"] | None = None
    source_ip: str | None = None
    session_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 100
    before: int | None = None
    """Only rows older (lower chain position) than this one: the next page's cursor."""

    @classmethod
    def parse(
        cls,
        *,
        user: str | None = None,
        action: str | None = None,
        decision: str | None = None,
        source: str | None = None,
        session: str | None = None,
        since: str | None = None,
        until: str | None = None,
        limit: str | int | None = None,
        before: str | int | None = None,
        now: datetime | None = None,
        option: Callable[[str], str] = lambda name: f"--{name}",
    ) -> AuditQuery:
        """Validate user input; raises :class:`InvalidInput` naming the option (``option``
        spells its name: ``--since`` on the command line, ``since`` over HTTP)."""
        if decision is not None and decision not in ("allow", "deny"):
            raise InvalidInput(option("decision"), f"{decision!r} is not allow or deny")
        source_ip = None
        if source is not None:
            try:
                source_ip = str(ipaddress.ip_address(source.strip()))
            except ValueError:
                raise InvalidInput(option("source"), f"{source!r} is not an IP address") from None
        start = parse_time(since, option=option("since"), now=now) if since is not None else None
        end = parse_time(until, option=option("until"), now=now) if until is not None else None
        if start is not None and end is not None and end < start:
            raise InvalidInput(option("until"), f"is before {option('since')}")
        size = 100
        if limit is not None:
            try:
                size = int(limit)
            except ValueError:
                raise InvalidInput(option("limit"), f"{limit!r} is not a number") from None
            if not 1 <= size <= MAX_LIMIT:
                raise InvalidInput(option("limit"), f"must be 1 to {MAX_LIMIT}")
        cursor = None
        if before is not None:
            try:
                cursor = int(before)
            except ValueError:
                raise InvalidInput(option("before"), f"{before!r} is not a row number") from None
            if not 1 <= cursor <= _MAX_ROW_ID:  # beyond it the database raises OverflowError
                raise InvalidInput(option("before"), "must be a positive row number")
        return cls(
            user=_bounded(user, option("user"), 256) if user is not None else None,
            action=_bounded(action, option("action"), 128) if action is not None else None,
            decision=decision,  # type: ignore[arg-type]
            source_ip=source_ip,
            session_id=_bounded(session, option("session"), 64) if session is not None else None,
            since=start,
            until=end,
            limit=size,
            before=cursor,
        )

    def where(self, statement: Select[Any]) -> Select[Any]:
        """``statement`` filtered by this query (not by ``before``/``limit``)."""
        if self.user is not None:
            statement = statement.where(_T.user == self.user)
        if self.action is not None:
            if self.action.endswith("*"):
                prefix = self.action[:-1]
                escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
                statement = statement.where(_T.action.like(escaped + "%", escape="\\"))
            else:
                statement = statement.where(_T.action == self.action)
        if self.decision is not None:
            statement = statement.where(_T.decision == self.decision)
        if self.source_ip is not None:
            statement = statement.where(_T.source_ip == self.source_ip)
        if self.session_id is not None:
            statement = statement.where(_T.session_id == self.session_id)
        if self.since is not None:
            statement = statement.where(_T.at >= self.since)
        if self.until is not None:
            statement = statement.where(_T.at <= self.until)
        return statement


@dataclass(frozen=True, slots=True)
class AuditPage:
    """One page of results, newest first."""

    events: list[dict[str, Any]]
    next_before: int | None
    """Pass as ``before`` for the next (older) page; None when this was the last."""

    def to_json(self) -> dict[str, Any]:
        return {"events": self.events, "next_before": self.next_before}


def export_record(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row as its exported record (``docs/audit.md``)."""
    at = row["at"]
    received = row["received_at"]
    return {
        "schema": SCHEMA,
        "id": int(row["id"]),
        "stream": row["stream"],
        "stream_seq": int(row["stream_seq"]),
        "subject": row["subject"],
        "v": int(row["v"]),
        "at": iso(at if at.tzinfo else at.replace(tzinfo=UTC)),
        "received_at": iso(received if received.tzinfo else received.replace(tzinfo=UTC)),
        "action": row["action"],
        "user": row["user"],
        "decision": row["decision"],
        "source_ip": row["source_ip"],
        "session_id": row["session_id"],
        "count": int(row["count"]),
        "event": pydantic_core.from_json(row["payload"]),
        "prev_hash": row["prev_hash"],
        "hash": row["hash"],
    }


class AuditSearch:
    """Reads the audit store: search pages, export, follow. Never writes."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._autocommit = (
            store.engine.execution_options(isolation_level="AUTOCOMMIT")
            if store.dialect == "postgresql"
            else None
        )

    async def _fetch(self, statement: Select[Any]) -> list[Any]:
        """Run one read. On PostgreSQL outside a transaction (one round trip instead of
        BEGIN, query, COMMIT: a single SELECT sees one snapshot anyway)."""
        if self._autocommit is None:
            async with self._store.transaction(readonly=True) as session:
                return list((await session.execute(statement)).mappings().all())
        try:
            async with self._autocommit.connect() as conn:
                return list((await conn.execute(statement)).mappings().all())
        except (exc.SQLAlchemyError, OSError) as err:
            reason = str(getattr(err, "orig", None) or err).strip().splitlines()[0][:300]
            raise StoreUnavailable(f"audit search failed: {reason}") from err

    def __repr__(self) -> str:
        return f"AuditSearch({self._store!r})"

    async def search(self, query: AuditQuery) -> AuditPage:
        """One page of matching rows, newest first."""
        statement = query.where(_select())
        if query.before is not None:
            statement = statement.where(_T.id < query.before)
        statement = statement.order_by(_T.id.desc()).limit(query.limit + 1)
        rows = await self._fetch(statement)
        events = [export_record(row) for row in rows[: query.limit]]
        more = len(rows) > query.limit
        return AuditPage(events, events[-1]["id"] if more and events else None)

    async def search_params(self, params: Mapping[str, str]) -> dict[str, Any]:
        """A page for HTTP query parameters (``user``, ``action``, ``decision``, ``source``,
        ``session``, ``since``, ``until``, ``limit``, ``before``) as JSON; raises
        :class:`InvalidInput` naming the parameter, also for an unknown one."""
        known = {"user", "action", "decision", "source", "session", "since", "until"}
        known |= {"limit", "before"}
        for name in params:
            if name not in known:
                raise InvalidInput(name, "unknown search parameter")
        query = AuditQuery.parse(
            user=params.get("user"),
            action=params.get("action"),
            decision=params.get("decision"),
            source=params.get("source"),
            session=params.get("session"),
            since=params.get("since"),
            until=params.get("until"),
            limit=params.get("limit"),
            before=params.get("before"),
            option=lambda name: name,
        )
        return (await self.search(query)).to_json()

    async def export(self, query: AuditQuery, *, page: int = 5000) -> AsyncIterator[dict[str, Any]]:
        """Every matching row, oldest first (``limit`` and ``before`` are ignored)."""
        after = 0
        while True:
            statement = query.where(_select()).where(_T.id > after).order_by(_T.id).limit(page)
            rows = await self._fetch(statement)
            for row in rows:
                yield export_record(row)
            if len(rows) < page:
                return
            after = int(rows[-1]["id"])

    async def newest_id(self) -> int:
        async with self._store.transaction(readonly=True) as session:
            value = (await session.execute(select(func.max(_T.id)))).scalar()
        return int(value or 0)

    async def follow(
        self,
        query: AuditQuery,
        *,
        after: int,
        interval: float = 1.0,
        stop: asyncio.Event | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """Rows matching ``query`` stored after row ``after``, oldest first, as they arrive,
        until ``stop`` is set."""
        stop = stop or asyncio.Event()
        while not stop.is_set():
            statement = query.where(_select()).where(_T.id > after).order_by(_T.id).limit(1000)
            rows = await self._fetch(statement)
            for row in rows:
                after = int(row["id"])
                yield export_record(row)
            if len(rows) < 1000:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), interval)

"""Read-only queries behind the console's lists (the store's public models, no writes)."""

from __future__ import annotations

import gzip
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, or_, select

from stockade.core.errors import InvalidInput, NotFound
from stockade.store import AuditEventRow, SessionRow, Store

__all__ = [
    "MAX_CAST_BYTES",
    "PAGE_SIZE",
    "SessionFilter",
    "SessionPage",
    "failure_events",
    "last_logins",
    "read_cast",
    "recording_path",
    "session_page",
]

#: Rows per page of the sessions list.
PAGE_SIZE = 50
#: The largest recording the console serves to the player.
MAX_CAST_BYTES = 64 << 20
_MAX_FILTER = 128
# The events the page may see: output, resize, marker. Input ("i": what the user typed, passwords
# at a prompt included, when the policy records input) never leaves the broker; neither does a
# line of any other shape (an escaped or unknown kind is dropped, not guessed at).
_SHOWN_EVENT = re.compile(rb'\[\s*-?[0-9][0-9.eE+-]*\s*,\s*"[orm]"\s*,')


def _text(value: str | None, field: str) -> str | None:
    if value is None or not value.strip():
        return None
    value = value.strip()
    if len(value) > _MAX_FILTER or any(ord(c) < 32 for c in value):
        raise InvalidInput(field, f"at most {_MAX_FILTER} printable characters")
    return value


@dataclass(frozen=True)
class SessionFilter:
    """The sessions page's filters (all optional)."""

    user: str | None = None
    workspace: str | None = None
    state: str | None = None
    """``live``, ``ended`` or None for both."""
    since: datetime | None = None
    until: datetime | None = None
    page: int = 1

    @classmethod
    def parse(cls, params: dict[str, str], *, parse_time: Any) -> SessionFilter:
        state = _text(params.get("state"), "state")
        if state not in (None, "live", "ended"):
            raise InvalidInput("state", "live, ended or empty")
        page_text = params.get("page") or "1"
        if (
            len(page_text) > 6  # int() of thousands of digits raises ValueError
            or not (page_text.isascii() and page_text.isdigit())  # "²".isdigit() too
            or not 1 <= int(page_text) <= 100_000
        ):
            raise InvalidInput("page", "a page number from 1")
        since = _text(params.get("since"), "since")
        until = _text(params.get("until"), "until")
        return cls(
            user=_text(params.get("user"), "user"),
            workspace=_text(params.get("workspace"), "workspace"),
            state=state,
            since=parse_time(since, option="since") if since else None,
            until=parse_time(until, option="until") if until else None,
            page=int(page_text),
        )


@dataclass(frozen=True)
class SessionPage:
    rows: list[dict[str, Any]]
    total: int
    page: int
    pages: int


def _session_row(row: Any) -> dict[str, Any]:
    return {
        "session_id": row.id,
        "username": row.username,
        "workspace": row.workspace,
        "client_ip": row.client_ip,
        "started_at": row.started_at,
        "ended_at": row.ended_at,
        "end_reason": row.end_reason,
        "recording": row.recording,
        "kind": row.kind,
        "fingerprint": row.fingerprint,
        "bytes_in": row.bytes_in,
        "bytes_out": row.bytes_out,
        "exit_status": row.exit_status,
        "live": row.ended_at is None,
    }


async def session_page(store: Store, query: SessionFilter) -> SessionPage:
    """One page of sessions, newest first."""
    t = SessionRow
    conditions: list[Any] = []
    if query.user:
        conditions.append(t.username == query.user)
    if query.workspace:
        conditions.append(t.workspace == query.workspace)
    if query.state == "live":
        conditions.append(t.ended_at.is_(None))
    elif query.state == "ended":
        conditions.append(t.ended_at.is_not(None))
    if query.since:
        conditions.append(t.started_at >= query.since)
    if query.until:
        conditions.append(t.started_at <= query.until)
    columns = (
        t.id, t.username, t.workspace, t.client_ip, t.started_at, t.ended_at, t.end_reason,
        t.recording, t.kind, t.fingerprint, t.bytes_in, t.bytes_out, t.exit_status,
    )  # fmt: skip
    listed = (
        select(*columns)
        .where(*conditions)
        .order_by(t.started_at.desc(), t.id)
        .limit(PAGE_SIZE)
        .offset((query.page - 1) * PAGE_SIZE)
    )
    counted = select(func.count()).select_from(t).where(*conditions)
    async with store.transaction(readonly=True) as session:
        total = int((await session.execute(counted)).scalar_one())
        rows = [_session_row(r) for r in (await session.execute(listed)).all()]
    pages = max(1, -(-total // PAGE_SIZE))
    return SessionPage(rows=rows, total=total, page=query.page, pages=pages)


async def one_session(store: Store, session_id: str) -> dict[str, Any]:
    """The session ``session_id``; NotFound when there is none."""
    if not session_id or len(session_id) > 64:
        raise NotFound("session", session_id[:64])
    async with store.transaction(readonly=True) as session:
        row = await session.get(SessionRow, session_id)
        if row is None:
            raise NotFound("session", session_id)
        return _session_row(row)


async def last_logins(store: Store) -> dict[str, datetime]:
    """Each user's latest session start (their last login through the gateway)."""
    t = SessionRow
    statement = select(t.username, func.max(t.started_at)).group_by(t.username)
    async with store.transaction(readonly=True) as session:
        return {name: when for name, when in (await session.execute(statement)).all() if when}


async def failure_events(
    store: Store, *, now: datetime, hours: int = 24, limit: int = 500_000
) -> list[tuple[datetime, int]]:
    """``(time, count)`` of every authentication failure in the audit store since ``hours``
    ago (a folded batch counts as many as it holds)."""
    t = AuditEventRow
    since = now.astimezone(UTC) - timedelta(hours=hours)
    statement = (
        select(t.at, t.count)
        .where(or_(t.action == "auth.failed", t.action.like("auth.failed.%")), t.at >= since)
        .limit(limit)
    )
    async with store.transaction(readonly=True) as session:
        return [(at, int(count or 1)) for at, count in (await session.execute(statement)).all()]


def recording_path(recording: str | None, recordings: Path) -> Path:
    """The recording file of a session, only inside ``recordings`` (a path the store holds
    elsewhere is refused: the store is not trusted to name any file on this host)."""
    if not recording:
        raise NotFound("recording", "this session was not recorded")
    base = recordings.resolve()
    candidates = [Path(recording)]
    if not recording.endswith(".gz"):
        candidates.append(Path(recording + ".gz"))  # compressed when the session ended
    for candidate in candidates:
        try:
            resolved = candidate.resolve(strict=True)
        except (OSError, RuntimeError):
            continue
        if resolved.is_relative_to(base) and resolved.is_file():
            return resolved
    raise NotFound("recording", Path(recording).name)


def read_cast(path: Path) -> bytes:
    """The asciicast v2 text of ``path`` (gzip undone), up to its last whole line, without its
    input events: only the header and the output, resize and marker events are served."""
    with path.open("rb") as raw:
        head = raw.read(2)
        raw.seek(0)
        if head == b"\x1f\x8b":
            with gzip.open(raw) as unzipped:
                data = unzipped.read(MAX_CAST_BYTES + 1)
        else:
            data = raw.read(MAX_CAST_BYTES + 1)
    if len(data) > MAX_CAST_BYTES:
        data = data[:MAX_CAST_BYTES]
    end = data.rfind(b"\n")
    data = data[: end + 1] if end >= 0 else b""
    first = data.split(b"\n", 1)[0]
    try:
        header = json.loads(first)
    except ValueError:
        raise InvalidInput("recording", "not an asciicast v2 file") from None
    if not isinstance(header, dict) or header.get("version") != 2:
        raise InvalidInput("recording", "not an asciicast v2 file")
    lines = data.split(b"\n")
    shown = [line for line in lines[1:] if _SHOWN_EVENT.match(line)]
    return b"\n".join([first, *shown, b""])

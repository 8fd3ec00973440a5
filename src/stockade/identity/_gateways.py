"""Gateway heartbeats: each gateway boot beats into the ``gateways`` table; every beat also
declares dead the boots whose last beat is older than ``stale_after`` and ends their sessions.

Each boot is judged by the ``stale_after`` it declared in its own beats (stored on its row),
never by the timeout of the gateway that notices: a gateway with a shorter timeout (a typo, or
a hostile one) cannot end a live gateway's sessions, and one with a longer timeout does not keep
a dead one's alive. So any live gateway ends a dead one's sessions within that boot's
``stale_after`` plus one beat interval, and no gateway's sessions are ended while it still beats.

Clocks: every timestamp is taken by the store, never by a gateway: on PostgreSQL the database's
clock (``now()``), so identity replicas whose clocks disagree still agree on who beats; on
SQLite (one identity process) that process's clock.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from stockade.core.errors import InvalidInput
from stockade.store import GatewayRow, SessionRow, Store

from ._types import Heartbeat, SessionInfo
from ._validation import check_text

__all__ = [
    "MIN_STALE_AFTER",
    "beating_boots",
    "check_boot",
    "record_heartbeat",
    "silent_beyond_timeout",
    "store_now",
]

#: The shortest heartbeat timeout a caller may ask for: a beat may be late by a scheduling hiccup.
MIN_STALE_AFTER = 1.0
#: The longest: a typo must not keep a dead gateway's sessions alive for days.
MAX_STALE_AFTER = 3600.0
#: Ended boots are forgotten after this long.
KEEP_ENDED = timedelta(days=1)
#: The end reason of sessions whose gateway stopped beating.
GATEWAY_LOST = "gateway_lost"
#: The timeout of boots recorded before r0007 (which declared none): the gateway's default.
LEGACY_STALE_AFTER = 3.0


async def record_heartbeat(
    store: Store,
    gateway_id: str,
    boot_id: str,
    *,
    stale_after: float,
    stopping: bool,
    to_info: Callable[[SessionRow], SessionInfo],
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> Heartbeat:
    """Record a beat of ``(gateway_id, boot_id)`` and end the boots gone stale (one transaction).

    ``stopping`` marks this boot ended on purpose (its sessions were ended by the gateway
    itself), so nobody declares it dead later.
    """
    gateway_id = check_text(gateway_id, field="gateway_id", limit=128)
    boot_id = check_text(boot_id, field="boot_id", limit=64)
    if not gateway_id or not boot_id:
        raise InvalidInput("boot_id", "a heartbeat names its gateway and boot")
    if not MIN_STALE_AFTER <= stale_after <= MAX_STALE_AFTER:
        raise InvalidInput(
            "stale_after", f"must be between {MIN_STALE_AFTER:g} and {MAX_STALE_AFTER:g} seconds"
        )
    async with store.transaction() as session:
        now = await store_now(store, session, clock)
        row = await session.get(GatewayRow, boot_id, with_for_update=True)
        alive = True
        if row is None:
            session.add(
                GatewayRow(
                    boot_id=boot_id,
                    gateway_id=gateway_id,
                    started_at=now,
                    seen_at=now,
                    ended_at=now if stopping else None,
                    end_reason="stopped" if stopping else "",
                    stale_after=stale_after,
                )
            )
        elif row.gateway_id != gateway_id:
            raise InvalidInput("boot_id", "this boot id belongs to another gateway")
        elif row.ended_at is not None:
            alive = stopping and row.end_reason == "stopped"
        else:
            row.seen_at = now
            row.stale_after = stale_after
            if stopping:
                row.ended_at = now
                row.end_reason = "stopped"
        # candidates: silent for longer than the shortest timeout any boot may declare; then
        # each is judged by its own (rows from before r0007 have none: the caller's)
        dead = [
            gone
            for gone in await session.scalars(
                select(GatewayRow)
                .where(
                    GatewayRow.ended_at.is_(None),
                    GatewayRow.seen_at < now - timedelta(seconds=MIN_STALE_AFTER),
                    GatewayRow.boot_id != boot_id,
                )
                .with_for_update(skip_locked=True)
            )
            if gone.seen_at < now - timedelta(seconds=gone.stale_after or stale_after)
        ]
        ended: list[SessionInfo] = []
        for gone in dead:
            gone.ended_at = now
            gone.end_reason = "stale"
            rows = await session.scalars(
                select(SessionRow)
                .where(
                    SessionRow.gateway_id == gone.gateway_id,
                    SessionRow.boot_id == gone.boot_id,
                    SessionRow.ended_at.is_(None),
                )
                .with_for_update()
            )
            for live in rows:
                live.ended_at = now
                live.end_reason = GATEWAY_LOST
                ended.append(to_info(live))
        await session.execute(
            delete(GatewayRow).where(
                GatewayRow.ended_at.is_not(None), GatewayRow.ended_at < now - KEEP_ENDED
            )
        )
    return Heartbeat(alive=alive, ended=tuple(ended))


async def beating_boots(
    store: Store,
    session: AsyncSession,
    gateway_id: str,
    *,
    besides: str,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> set[str]:
    """The boots of ``gateway_id`` other than ``besides`` that still beat (within the timeout
    each declared). The others, silent beyond it, are declared dead here (``ended_at`` set,
    reason ``stale``) so they never come back and open sessions; the rows are locked, so a
    late beat either lands first (and its boot is spared) or learns it was declared dead."""
    now = await store_now(store, session, clock)
    beating: set[str] = set()
    for row in await session.scalars(
        select(GatewayRow)
        .where(
            GatewayRow.gateway_id == gateway_id,
            GatewayRow.ended_at.is_(None),
            GatewayRow.boot_id != besides,
        )
        .with_for_update()
    ):
        if silent_beyond_timeout(row.seen_at, None, row.stale_after or LEGACY_STALE_AFTER, now):
            row.ended_at = now
            row.end_reason = "stale"
        else:
            beating.add(row.boot_id)
    return beating


async def check_boot(session: AsyncSession, gateway_id: str, boot_id: str) -> None:
    """Refuse a session opened under a boot that was declared dead or stopped, or that belongs
    to another gateway (:class:`InvalidInput` on ``boot_id``): no reaper would ever end it.
    The row is share-locked, so a reaper (``FOR UPDATE SKIP LOCKED``) either ends the boot
    before this session is recorded or leaves it, and this session, for its next beat.
    A boot that never beat (no heartbeat loop) is not checked."""
    row = await session.get(GatewayRow, boot_id, with_for_update={"read": True})
    if row is None:
        return
    if row.gateway_id != gateway_id:
        raise InvalidInput("boot_id", "this boot id belongs to another gateway")
    if row.ended_at is not None:
        raise InvalidInput(
            "boot_id", f"this gateway boot ended ({row.end_reason}); it opens no session"
        )


async def store_now(
    store: Store,
    session: AsyncSession,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> datetime:
    """The time heartbeats are stamped and judged with: PostgreSQL's clock (one for every
    identity replica), else ``clock``."""
    if store.dialect == "postgresql":
        stamped: datetime | None = await session.scalar(select(func.now()))
        if stamped is not None:
            return stamped.astimezone(UTC)
    return clock()


def silent_beyond_timeout(
    seen_at: datetime | None,
    ended_at: datetime | None,
    stale_after: float | None,
    now: datetime | None = None,
) -> bool:
    """Whether a boot last seen at ``seen_at`` is silent beyond the timeout it declared, at
    ``now`` (the store's clock: PostgreSQL's, else this process's). A boot that never beat, or
    ended on purpose, is not silent."""
    if seen_at is None or ended_at is not None or stale_after is None:
        return False
    current = datetime.now(UTC) if now is None else now
    if current.tzinfo is None:
        current = current.replace(tzinfo=UTC)
    if seen_at.tzinfo is None:
        seen_at = seen_at.replace(tzinfo=UTC)
    return seen_at < current - timedelta(seconds=stale_after)

"""The audit service against a real nats-server and both databases."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import nats.js.errors
import pytest
from sqlalchemy import text

from stockade.audit import AuditQuery, AuditSearch, AuditService, load_public_key, verify_store
from stockade.bus import Bus
from stockade.core import events as ev
from stockade.core.settings import AuditSettings
from stockade.store import Store

from .samples import sample_event


async def _count(store: Store) -> int:
    async with store.engine.connect() as conn:
        return int((await conn.execute(text("SELECT count(*) FROM audit_events"))).scalar() or 0)


async def _wait_rows(store: Store, want: int) -> None:
    for _ in range(600):  # 30 s
        if await _count(store) >= want:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"fewer than {want} rows stored")


@pytest.fixture
async def bus(nats_url: str) -> Bus:
    connected = await Bus.connect(nats_url, name="audit-test")
    await connected.ensure_streams()
    for stream in (ev.STREAM_AUTH, ev.STREAM_AUDIT, ev.STREAM_AUDIT_HEADS, "STOCKADE_DEADLETTER"):
        await connected.js.purge_stream(stream)
    for stream, durable in (("STOCKADE_AUTH", "audit-auth"), ("STOCKADE_AUDIT", "audit")):
        with contextlib.suppress(nats.js.errors.NotFoundError):  # absent
            await connected.js.delete_consumer(stream, durable)
    yield connected  # type: ignore[misc]
    await connected.close()


async def test_every_event_stored_once_malformed_dead_lettered(
    bus: Bus, store: Store, tmp_path: Path
) -> None:
    settings = AuditSettings(batch=50, head_every_rows=20, head_every_seconds=0.5)
    service = AuditService(
        bus=bus, store=store, settings=settings, data_dir=tmp_path, poll_interval=0.2
    )
    await service.start()
    try:
        events = [sample_event(i) for i in range(1, 61)]
        events += [
            ev.SessionEnded(session_id="s-3", username="bob", exit_status=0, reason="exited"),
            ev.ShieldBan(source="203.0.113.9", until=ev.utcnow(), strikes=1, reason="bruteforce"),
            ev.ShieldUnban(source="203.0.113.9", reason="admin"),
            ev.IdentityChanged(username="dave", change="user_added"),
            ev.PolicyReloaded(source="builtin", digest="d" * 64),
            ev.BlueprintChanged(actor="root", name="python", action="update", digest="e" * 64),
            ev.RecordingsSwept(directory="/r", keep_seconds=86400, removed=["a.cast"],
                               removed_count=1, removed_bytes=10),
        ]  # fmt: skip
        await bus.publish_many(events)
        await bus.publish_bytes(ev.SUBJECT_AUTH_FAILED, b"{not json")
        await bus.publish_bytes(ev.SUBJECT_SESSION_STARTED, json.dumps({"v": 1}).encode())
        await bus.publish_bytes(ev.SUBJECT_AUTHZ_DECISION, b"x" * (ev.MAX_EVENT_BYTES + 1))
        await bus.publish_bytes("stockade.session.kill", b'{"v": 1, "at": "2026-12-01"}')
        await bus.publish(ev.SessionEnded(session_id="s-9", username="carol"))  # after the bad
        await _wait_rows(store, len(events) + 1)
        for _ in range(200):
            if service.stats()["rejected"] >= 4:
                break
            await asyncio.sleep(0.05)
    finally:
        await service.stop()
    assert await _count(store) == len(events) + 1
    assert service.stats()["rejected"] == 4
    assert await bus.last_sequence("STOCKADE_DEADLETTER") >= 4
    search = AuditSearch(store)
    page = await search.search(AuditQuery.parse(action="identity.user_added"))
    assert [e["event"]["username"] for e in page.events] == ["dave"]
    bans = await search.search(AuditQuery.parse(source="203.0.113.9"))
    assert {e["action"] for e in bans.events} == {"shield.ban", "shield.unban"}
    folded = await search.search(AuditQuery.parse(action="ssh.connect", limit=1000))
    assert sum(e["count"] for e in folded.events) == sum(
        e.count for e in events if isinstance(e, ev.DecisionRecord)
    )
    report = await verify_store(store, service.heads_file, load_public_key(service.key_file))
    assert report.ok, report.problem
    assert report.signed_through == report.rows == len(events) + 1
    assert await bus.last_sequence(ev.STREAM_AUDIT_HEADS) >= 1  # heads are on the bus too
    assert service.key_file.stat().st_mode & 0o777 == 0o600


async def test_restart_catches_up_unsigned_rows(bus: Bus, store: Store, tmp_path: Path) -> None:
    """Rows committed but not signed (a crash before the head): the next start signs them."""
    settings = AuditSettings(head_every_rows=1000, head_every_seconds=3600)
    service = AuditService(
        bus=bus, store=store, settings=settings, data_dir=tmp_path, poll_interval=0.2
    )
    await service.start()
    await bus.publish_many([sample_event(i) for i in range(1, 31)])
    await _wait_rows(store, 30)
    for task in service._tasks:
        task.cancel()
    await asyncio.gather(*service._tasks, return_exceptions=True)
    assert not service.heads_file.exists()
    again = AuditService(bus=bus, store=store, settings=settings, data_dir=tmp_path)
    await again.start()
    await again.stop()
    report = await verify_store(store, again.heads_file, load_public_key(again.key_file))
    assert report.ok
    assert report.signed_through == 30

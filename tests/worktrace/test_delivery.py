"""Fail closed on delivery: an alert or a session kill that the bus refused is kept and sent
again, not logged and forgotten (issue 15). The outage is real: the audit stream that stores
``stockade.worktrace.alert`` and ``stockade.session.kill`` is deleted from a real nats-server,
so JetStream refuses the publishes, then created again."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from structlog.testing import capture_logs

from stockade.authz import Authorizer
from stockade.bus import Bus, EmbeddedNats
from stockade.core.errors import InvalidInput
from stockade.core.events import SUBJECT_SESSION_KILL, SessionKill
from stockade.core.settings import AuthzSettings, WorktraceSettings
from stockade.workspace import DEFAULT_BLUEPRINT, render_workspace
from stockade.worktrace import (
    AlertResponder,
    AnomalyConfig,
    BusAlertSink,
    Engine,
    FileFollower,
    NatsSource,
    RuleSource,
    Worktrace,
    load_rules,
    read_alerts,
)
from stockade.worktrace._alerts import AUDIT_STREAM

from .conftest import exec_event, gke_lines, line


@pytest.fixture
async def bus(tmp_path: Path) -> AsyncIterator[Bus]:
    async with EmbeddedNats(tmp_path / "nats") as url:
        bus = await Bus.connect(url, name="worktrace-delivery-test")
        await bus.ensure_streams()
        yield bus
        await bus.close()


def attack(session: str) -> dict[str, Any]:
    event = exec_event("/usr/bin/nsenter", "-t 1 -m bash")
    event["process_exec"]["process"]["pod"]["pod_labels"]["stockade.dev/session"] = session
    return event


async def test_alert_refused_by_the_bus_is_published_once_it_is_back_broke(bus: Bus) -> None:
    """BROKE: ``BusAlertSink.emit`` logged a refused publish and dropped the alert."""
    started = datetime.now(UTC) - timedelta(seconds=1)
    sink = BusAlertSink(bus)
    (alert,) = Engine(load_rules(), anomaly=AnomalyConfig(enabled=False)).feed(
        line(attack("s-outage"))
    )
    await bus.js.delete_stream(AUDIT_STREAM)
    await sink.emit([alert])
    assert (sink.published, len(sink.pending)) == (0, 1)
    await bus.ensure_streams()
    await sink.retry()
    assert (sink.published, len(sink.pending)) == (1, 0)
    stored = await read_alerts(bus, since=started)
    assert [(a.alert_id, a.session_id) for a in stored] == [(alert.alert_id, "s-outage")]


async def test_kill_refused_by_the_bus_is_sent_by_the_service_later_broke(
    bus: Bus, tmp_path: Path
) -> None:
    """BROKE: a ``SessionKill`` the bus refused was logged and never sent: the attacker's
    session lived on. The service now retries the alert and the kill on its own, with no
    further event arriving, and both end up stored in the audit stream."""
    export = tmp_path / "tetragon.log"
    export.write_bytes(b"")
    sink = BusAlertSink(bus)
    responder = AlertResponder(Authorizer(settings=AuthzSettings()), bus)
    service = Worktrace(
        RuleSource(),
        sinks=[sink],
        responder=responder,
        settings=WorktraceSettings(anomalies=False, reload_interval=0.05),
        retry_interval=0.05,
    )
    follower = FileFollower(export, poll_interval=0.002)
    started = datetime.now(UTC) - timedelta(seconds=1)
    task = asyncio.create_task(service.run(follower))
    try:
        await bus.js.delete_stream(AUDIT_STREAM)
        with export.open("ab") as handle:
            handle.write(orjson.dumps(attack("s-retry")) + b"\n")
        for _ in range(500):  # bounded: until the refused kill is kept
            if responder.pending:
                break
            await asyncio.sleep(0.01)
        assert len(responder.pending) == 1
        assert len(sink.pending) == 1
        await bus.ensure_streams()
        for _ in range(500):
            if not (sink.pending or responder.pending):
                break
            await asyncio.sleep(0.01)
        assert (sink.published, len(sink.pending), len(responder.pending)) == (1, 0, 0)
        last = await bus.last_sequence(AUDIT_STREAM, SUBJECT_SESSION_KILL)
        kills = [
            SessionKill.from_bytes(d.data)
            async for d in bus.read_stream(
                AUDIT_STREAM, SUBJECT_SESSION_KILL, since=started, until_seq=last, idle=1.0
            )
        ]
        assert [k.session_id for k in kills] == ["s-retry"]
        assert [a.session_id for a in await read_alerts(bus, since=started)] == ["s-retry"]
    finally:
        service.stop()
        follower.close()
        await asyncio.wait_for(task, 10)


# --- a restart of the consumer: the follower's commit ------------------------------------


def _write(path: Path, *lines: bytes, mtime: int | None = None) -> None:
    with path.open("ab") as handle:
        handle.write(b"".join(line + b"\n" for line in lines))
    if mtime is not None:
        os.utime(path, ns=(mtime, mtime))


def _rotate(export: Path, n: int) -> None:
    """Tetragon's exporter: rename the full file away, the next one is created on write."""
    export.rename(export.with_name(f"tetragon-2026-12-01T10-00-0{n}.000.log"))


def _drain(follower: FileFollower, polls: int = 4) -> list[bytes]:
    out: list[bytes] = []
    for _ in range(polls):
        out += follower.poll()
    return out


def test_restart_goes_on_from_the_commit_broke(tmp_path: Path) -> None:
    """BROKE: a new follower read the whole export again (``from_start``) or skipped what was
    written while no consumer ran (``from_start=False``)."""
    export, state = tmp_path / "tetragon.log", tmp_path / "follower.json"
    _write(export, b'{"n": 1}', b'{"n": 2}')
    first = FileFollower(export, state=state)
    assert _drain(first) == [b'{"n": 1}', b'{"n": 2}']
    first.commit()
    assert os.stat(state).st_mode & 0o777 == 0o600
    _write(export, b'{"n": 3}', b'{"n": 4}')  # the consumer is down
    assert _drain(FileFollower(export, state=state)) == [b'{"n": 3}', b'{"n": 4}']


def test_restart_reads_the_files_rotated_while_down(tmp_path: Path) -> None:
    """Down across two rotations: the rest of the file it was reading, the file rotated
    after it, then the export; each line once."""
    export, state = tmp_path / "tetragon.log", tmp_path / "follower.json"
    _write(export, b'{"a": 1}', mtime=1_000)
    _write(tmp_path / "tetragon-2026-11-30T10-00-00.000.log", b'{"old": 1}', mtime=500)
    first = FileFollower(export, state=state)
    assert _drain(first) == [b'{"a": 1}']
    first.commit()
    _write(export, b'{"a": 2}', mtime=2_000)
    _rotate(export, 1)
    _write(export, b'{"b": 1}', b'{"b": 2}', mtime=3_000)
    _rotate(export, 2)
    _write(export, b'{"c": 1}', mtime=4_000)
    lines = _drain(FileFollower(export, state=state), polls=6)
    assert lines == [b'{"a": 2}', b'{"b": 1}', b'{"b": 2}', b'{"c": 1}']


def test_restart_with_a_commit_of_a_deleted_file_reads_everything(tmp_path: Path) -> None:
    """The committed file is gone (deleted by the exporter's retention): every rotated file
    and the export are read, and that is logged. Repeats are possible, losses are not."""
    export, state = tmp_path / "tetragon.log", tmp_path / "follower.json"
    _write(export, b'{"a": 1}')
    first = FileFollower(export, state=state)
    _drain(first)
    first.commit()
    _write(export, b'{"a": 2}')
    _rotate(export, 1)
    (tmp_path / "tetragon-2026-12-01T10-00-01.000.log").unlink()
    _write(tmp_path / "tetragon-2026-12-01T10-00-02.000.log", b'{"b": 1}', mtime=3_000)
    _write(export, b'{"c": 1}', mtime=4_000)
    with capture_logs() as logs:
        lines = _drain(FileFollower(export, state=state))
    assert lines == [b'{"b": 1}', b'{"c": 1}']
    assert [e["event"] for e in logs] == ["worktrace.resume_lost"]


def test_restart_after_a_rewrite_in_place_reads_from_the_start(tmp_path: Path) -> None:
    export, state = tmp_path / "tetragon.log", tmp_path / "follower.json"
    _write(export, b'{"a": 1}', b'{"a": 2}')
    first = FileFollower(export, state=state)
    _drain(first)
    first.commit()
    export.write_bytes(b'{"z": 1}\n{"z": 2}\n{"z": 3}\n')  # copytruncate and a longer rewrite
    assert _drain(FileFollower(export, state=state)) == [b'{"z": 1}', b'{"z": 2}', b'{"z": 3}']


def test_unreadable_state_is_a_one_line_error(tmp_path: Path) -> None:
    state = tmp_path / "follower.json"
    state.write_text("{not json")
    with pytest.raises(InvalidInput) as info:
        FileFollower(tmp_path / "tetragon.log", state=state)
    assert str(state) in str(info.value)


async def test_consumer_crash_before_delivery_loses_no_alert_broke(
    bus: Bus, tmp_path: Path
) -> None:
    """BROKE: the consumer read the attack, the bus refused its alert, the consumer died:
    the alert lived only in its memory. With a state file the follower is committed only
    after a batch's alerts are delivered, so the restarted consumer reads the line again."""
    export, state = tmp_path / "tetragon.log", tmp_path / "follower.json"
    export.write_bytes(b"")
    started = datetime.now(UTC) - timedelta(seconds=1)

    def service() -> tuple[Worktrace, BusAlertSink]:
        sink = BusAlertSink(bus)
        settings = WorktraceSettings(anomalies=False, respond=False, reload_interval=0.05)
        return Worktrace(RuleSource(), sinks=[sink], settings=settings, retry_interval=60), sink

    first, sink = service()
    task = asyncio.create_task(first.run(FileFollower(export, poll_interval=0.002, state=state)))
    _write(export, gke_lines()[0])
    for _ in range(500):  # bounded: until the benign first line is committed
        if state.exists():
            break
        await asyncio.sleep(0.01)
    assert state.exists()
    await bus.js.delete_stream(AUDIT_STREAM)
    _write(export, orjson.dumps(attack("s-crash")))
    for _ in range(500):  # bounded: until the alert is read and refused
        if sink.pending:
            break
        await asyncio.sleep(0.01)
    assert sink.pending
    task.cancel()  # the crash: the pending alert is gone with the process
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await bus.ensure_streams()
    second, sink = service()
    follower = FileFollower(export, poll_interval=0.002, state=state)
    task = asyncio.create_task(second.run(follower))
    try:
        for _ in range(500):
            if sink.published:
                break
            await asyncio.sleep(0.01)
        stored = [a.session_id for a in await read_alerts(bus, since=started)]
        assert stored == ["s-crash"]
    finally:
        second.stop()
        follower.close()
        await asyncio.wait_for(task, 10)


async def test_concurrent_retries_publish_each_alert_once(bus: Bus) -> None:
    """The service's periodic retry and an emit run at once: each pending alert is stored once
    (found by the bench: two rounds published the same head and both popped it)."""
    started = datetime.now(UTC) - timedelta(seconds=1)
    engine = Engine(load_rules(), anomaly=AnomalyConfig(enabled=False))
    alerts = [a for n in range(3) for a in engine.feed(line(attack(f"s-c{n}")))]
    sink = BusAlertSink(bus)
    await bus.js.delete_stream(AUDIT_STREAM)
    await sink.emit(alerts)
    assert len(sink.pending) == 3
    await bus.ensure_streams()
    await asyncio.gather(sink.retry(), sink.retry(), sink.emit([]))
    assert (sink.published, len(sink.pending)) == (3, 0)
    stored = sorted(a.session_id or "" for a in await read_alerts(bus, since=started))
    assert stored == ["s-c0", "s-c1", "s-c2"]


# --- the NATS source: a flood past its queue ----------------------------------------------


async def test_nats_source_overflow_is_logged_not_silent_broke(bus: Bus) -> None:
    """BROKE: a flood of events (a fork bomb's execs) past the source's queue dropped events
    with only a counter to show for it: the attack that followed went unseen and unsaid. Each
    run of drops is now logged as an error (once, until the queue has room again)."""
    source = NatsSource(bus, "tetragon.flood.events", max_pending=4)
    await source.start()
    try:
        with capture_logs() as logs:
            for n in range(10):
                await bus.nc.publish("tetragon.flood.events", b'{"n": %d}' % n)
            await bus.nc.flush()
            for _ in range(500):  # bounded: until all ten were received
                if source.received == 10:
                    break
                await asyncio.sleep(0.01)
        assert (source.received, source.dropped) == (10, 6)
        assert [e["event"] for e in logs if e["log_level"] == "error"] == [
            "worktrace.source_overflow"
        ]
        await source.stop()  # with its queue full: it used to raise QueueFull
        got = [b async for batch in source for b in batch]
        assert got == [b'{"n": %d}' % n for n in (1, 2, 3)]
    finally:
        await source.stop()


# --- alerts from a real workspace Pod: who is killed, who is banned -------------------------


def _pod_attack(owner: str) -> Any:
    """nsenter run in the Pod that ``stockade.workspace`` renders for ``owner``'s workspace,
    with the labels Tetragon exports for it (the Pod's own)."""
    pod = render_workspace(DEFAULT_BLUEPRINT, workspace="w1", owner=owner, uid=200002).pod
    event = exec_event("/usr/bin/nsenter", "-t 1 -a sh", labels=pod["metadata"]["labels"])
    (alert,) = Engine(load_rules(), anomaly=AnomalyConfig(enabled=False)).feed(line(event))
    return alert


def test_alert_from_a_rendered_workspace_pod_kills_its_session() -> None:
    alert = _pod_attack("ann")
    _, events, skipped = AlertResponder(Authorizer(settings=AuthzSettings()), bus=None).decide(  # type: ignore[arg-type]
        alert
    )
    assert [type(e).__name__ for e in events] == ["SessionKill"], skipped
    (kill,) = events
    assert kill.session_id == "*"  # type: ignore[attr-defined]
    assert kill.workspace_label == "w1"  # type: ignore[attr-defined]


@pytest.mark.parametrize("owner", ["alice@example.com", "_svc", "bob-", "ann"])
def test_alert_from_a_workspace_pod_names_the_real_user(owner: str) -> None:
    """The user label is a hashed stand-in for a name that is no label value (``_svc``); the
    Pod also carries the exact name, reversibly, so a ``ban_user`` names the real user."""
    assert _pod_attack(owner).session.username == owner

"""Fail closed on delivery: an alert or a session kill that the bus refused is kept and sent
again, not logged and forgotten (issue 15). The outage is real: the audit stream that stores
``stockade.worktrace.alert`` and ``stockade.session.kill`` is deleted from a real nats-server,
so JetStream refuses the publishes, then created again."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from stockade.authz import Authorizer
from stockade.bus import Bus, EmbeddedNats
from stockade.core.events import SUBJECT_SESSION_KILL, SessionKill
from stockade.core.settings import AuthzSettings, WorktraceSettings
from stockade.worktrace import (
    AlertResponder,
    AnomalyConfig,
    BusAlertSink,
    Engine,
    FileFollower,
    RuleSource,
    Worktrace,
    load_rules,
    read_alerts,
)
from stockade.worktrace._alerts import AUDIT_STREAM

from .conftest import exec_event, line


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

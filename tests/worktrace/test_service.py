"""The chain on real pieces: followed export -> engine -> NATS alert -> policy -> SessionKill."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from stockade.authz import Authorizer
from stockade.bus import Bus
from stockade.core.events import SUBJECT_SESSION_KILL, SessionKill
from stockade.core.settings import AuthzSettings, WorktraceSettings
from stockade.worktrace import (
    AlertResponder,
    BusAlertSink,
    FileFollower,
    RuleSource,
    Worktrace,
    read_alerts,
)

from .conftest import exec_event, gke_lines


async def test_followed_export_to_session_kill(nats_url: str, tmp_path: Path) -> None:
    bus = await Bus.connect(nats_url, name="worktrace-service-test")
    await bus.ensure_streams()
    kills: asyncio.Queue[bytes] = asyncio.Queue()

    async def on_kill(msg: Any) -> None:
        await kills.put(msg.data)

    sub = await bus.nc.subscribe(SUBJECT_SESSION_KILL, cb=on_kill)
    export = tmp_path / "tetragon.log"
    export.write_bytes(b"\n".join(gke_lines()) + b"\n")
    started = datetime.now(UTC) - timedelta(seconds=1)
    service = Worktrace(
        RuleSource(),
        sinks=[BusAlertSink(bus)],
        responder=AlertResponder(Authorizer(settings=AuthzSettings()), bus),
        settings=WorktraceSettings(anomalies=False, reload_interval=0.05),
    )
    follower = FileFollower(export, poll_interval=0.002)
    task = asyncio.create_task(service.run(follower))
    try:
        await asyncio.sleep(0.1)
        attack = exec_event("/usr/bin/nsenter", "-t 1 -m -u -n -i -p bash #service")
        labels = attack["process_exec"]["process"]["pod"]["pod_labels"]
        labels["stockade.dev/session"] = "s-service-test"
        with export.open("ab") as handle:
            handle.write(orjson.dumps(attack) + b"\n")
        kill = SessionKill.from_bytes(await asyncio.wait_for(kills.get(), 10))
        assert (kill.session_id, kill.username, kill.by) == ("s-service-test", "alice", "worktrace")
        stored = [
            a for a in await read_alerts(bus, since=started) if a.session_id == "s-service-test"
        ]
        assert [a.rule_id for a in stored] == ["nsenter-target"]
        assert service.engine.stats()["events"] == 4
    finally:
        service.stop()
        follower.close()
        await asyncio.wait_for(task, 10)
        await sub.unsubscribe()
        await bus.close()

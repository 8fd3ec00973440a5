"""The decision log: folded DecisionRecords, published off the hot path, to a real NATS too."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import nats
from structlog.testing import capture_logs

from stockade.authz import Authorizer
from stockade.bus import Bus
from stockade.core.events import SUBJECT_AUTHZ_DECISION, DecisionRecord, Event
from stockade.core.settings import AuthzSettings

from .conftest import HEADER, ssh_request, write_bundle


class ListSink:
    def __init__(self) -> None:
        self.records: list[DecisionRecord] = []

    async def publish(self, event: Event) -> None:
        assert isinstance(event, DecisionRecord)
        self.records.append(event)


class FailingSink:
    def __init__(self) -> None:
        self.calls = 0

    async def publish(self, event: Event) -> None:
        self.calls += 1
        raise ConnectionError("bus is down")


def by_user(records: list[DecisionRecord]) -> dict[str, list[tuple[str, bool, int]]]:
    out: dict[str, list[tuple[str, bool, int]]] = {}
    for record in records:
        out.setdefault(record.user, []).append((record.action, record.allow, record.count))
    return out


async def test_identical_decisions_fold_into_one_record_flushed_on_stop() -> None:
    sink = ListSink()
    authz = Authorizer(settings=AuthzSettings(fold_window=60), decision_sink=sink)
    await authz.start()
    for _ in range(100):
        authz.decide(ssh_request(roles=("contractor",)))
    for _ in range(3):
        authz.decide(ssh_request(owner="bob"))
    authz.decide(ssh_request(user="bob", owner="bob"))
    await asyncio.sleep(0)
    assert sink.records == []  # the window is still open
    await authz.stop()
    assert by_user(sink.records) == {
        "alice": [("ssh.connect", True, 100), ("ssh.connect", False, 3)],
        "bob": [("ssh.connect", True, 1)],
    }
    allowed = sink.records[0]
    assert allowed.resource == {"kind": "workspace", "name": "ws1", "owner": "alice", "labels": {}}
    assert allowed.obligations["record_session"] is True
    assert allowed.reasons == []
    assert allowed.first_at <= allowed.at
    assert sink.records[1].reasons == ["workspace ws1 is owned by bob"]


async def test_records_are_published_when_the_window_ends() -> None:
    sink = ListSink()
    authz = Authorizer(settings=AuthzSettings(fold_window=0.05), decision_sink=sink)
    await authz.start()
    try:
        for _ in range(5):
            authz.decide(ssh_request())
        for _ in range(400):  # bounded wait; no timing assertion
            if sink.records:
                break
            await asyncio.sleep(0.01)
        assert sum(r.count for r in sink.records) == 5
    finally:
        await authz.stop()
    assert sum(r.count for r in sink.records) == 5


async def test_different_obligations_or_reasons_do_not_fold(tmp_path: Path) -> None:
    body = (
        'decision := {"allow": true, "reasons": [input.context.why], '
        '"obligations": {"max_session_seconds": input.context.n}}\n'
    )
    sink = ListSink()
    authz = Authorizer(
        settings=AuthzSettings(fold_window=60),
        bundle_dir=write_bundle(tmp_path, {"p.rego": HEADER + body}),
        decision_sink=sink,
    )
    await authz.start()
    for why, n in [("x", 1), ("x", 1), ("y", 1), ("x", 2)]:
        authz.decide(ssh_request(extra={"why": why, "n": n}))
    await authz.stop()
    assert [(r.reasons, r.obligations, r.count) for r in sink.records] == [
        (["x"], {"max_session_seconds": 1}, 2),
        (["y"], {"max_session_seconds": 1}, 1),
        (["x"], {"max_session_seconds": 2}, 1),
    ]


async def test_a_failing_sink_costs_records_not_decisions() -> None:
    sink = FailingSink()
    authz = Authorizer(settings=AuthzSettings(fold_window=0.01), decision_sink=sink)
    await authz.start()
    with capture_logs() as logs:
        for _ in range(50):
            assert authz.decide(ssh_request()).allow
        authz.decide(ssh_request(owner="bob"))
        await authz.stop()
    assert sink.calls >= 2
    dropped = [e for e in logs if e["event"] == "authz.decision_log.dropped"]
    assert sum(e["dropped_decisions"] for e in dropped) == 51
    assert all(e["error"] == "bus is down" for e in dropped)


async def test_no_log_without_sink_or_when_disabled() -> None:
    sink = ListSink()
    authz = Authorizer(settings=AuthzSettings(decision_log=False), decision_sink=sink)
    await authz.start()
    authz.decide(ssh_request())
    await authz.stop()
    assert sink.records == []
    silent = Authorizer(settings=AuthzSettings())
    await silent.start()
    assert silent.decide(ssh_request()).allow
    await silent.stop()


async def test_records_reach_nats(nats_url: str) -> None:
    user = f"u{uuid.uuid4().hex[:8]}"
    received: list[DecisionRecord] = []
    got_all = asyncio.Event()

    async def on_message(msg: nats.aio.msg.Msg) -> None:
        record = DecisionRecord.from_bytes(msg.data)
        if record.user == user:
            received.append(record)
            if sum(r.count for r in received) == 26:
                got_all.set()

    watcher = await nats.connect(nats_url)
    bus = await Bus.connect(nats_url, name="authz-test")
    try:
        await bus.ensure_streams()
        await watcher.subscribe(SUBJECT_AUTHZ_DECISION, cb=on_message)
        await watcher.flush()
        authz = Authorizer(settings=AuthzSettings(fold_window=60), decision_sink=bus)
        await authz.start()
        for _ in range(25):
            authz.decide(ssh_request(user=user, owner=user, roles=("sudoer",)))
        authz.decide(ssh_request("ssh.direct-tcpip", user=user, owner=user))
        await authz.stop()
        await asyncio.wait_for(got_all.wait(), 10)
    finally:
        await watcher.close()
        await bus.close()
    assert sorted((r.action, r.allow, r.count) for r in received) == [
        ("ssh.connect", True, 25),
        ("ssh.direct-tcpip", False, 1),
    ]
    allowed = next(r for r in received if r.allow)
    assert allowed.obligations["sudo"] is True
    assert allowed.obligations["max_session_seconds"] == 28800


async def test_stop_flushes_even_without_start_and_restart_works() -> None:
    sink = ListSink()
    authz = Authorizer(settings=AuthzSettings(fold_window=60), decision_sink=sink)
    authz.decide(ssh_request())
    await authz.stop()
    assert [r.count for r in sink.records] == [1]
    await authz.start()
    await authz.stop()
    await authz.start()
    authz.decide(ssh_request())
    authz.decide(ssh_request())
    await authz.stop()
    assert [r.count for r in sink.records] == [1, 2]

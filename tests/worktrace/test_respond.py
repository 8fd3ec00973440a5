"""The obligation hook: policy answers alerts; kill_session / ban_user become bus events.

The default bundle is evaluated by the real regorus engine, the events go through a real
nats-server into the audit stream. Ending the OpenSSH session on ``stockade.session.kill`` is the
gateway's part (its end-to-end test belongs with the gateway rework).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from stockade.authz import Authorizer
from stockade.bus import Bus
from stockade.core.events import (
    SUBJECT_SESSION_KILL,
    SessionKill,
    UserBan,
)
from stockade.core.settings import AuthzSettings
from stockade.worktrace import (
    ACTION,
    AlertResponder,
    AnomalyConfig,
    Engine,
    load_rules,
    respond_input,
)

from .conftest import exec_event, kprobe_event, line

CHAIN = """\
rules:
  - {id: c1, confidence: 0.9, report: false, global: false, process: {binary: [one]}}
  - {id: c2, confidence: 0.9, report: false, global: false, process: {binary: [two]}}
attack_paths:
  - {id: two-step, time_window: 1h, rules: [c1, c2]}
"""


def alert_for(raw: dict[str, Any]) -> Any:
    (alert,) = Engine(load_rules(), anomaly=AnomalyConfig(enabled=False)).feed(line(raw))
    return alert


@pytest.fixture(scope="module")
def authorizer() -> Authorizer:
    return Authorizer(settings=AuthzSettings())


class Recorder:
    """Collects what a responder publishes (for the pure decision tests)."""

    def __init__(self) -> None:
        self.events: list[Any] = []

    async def publish(self, event: Any, *, ack_timeout: float = 5.0) -> int:
        self.events.append(event)
        return len(self.events)


def test_input_document_shape() -> None:
    alert = alert_for(exec_event("/usr/bin/nsenter", "-t 1 -m bash"))
    doc = respond_input(alert)
    assert doc["action"] == ACTION
    assert doc["resource"] == {
        "kind": "session",
        "name": "s-0001",
        "owner": "alice",
        "labels": {
            "kind": "rule",
            "rule": "nsenter-target",
            "workspace": "ws-alice",
            "pod": "stockade-workspaces/ws-alice-0",
        },
    }
    assert doc["context"]["session_id"] == "s-0001"
    assert doc["context"]["alert"]["confidence"] == 0.95
    assert doc["context"]["user"]["name"] == "alice"


def test_high_confidence_rule_kills_the_session(authorizer: Authorizer) -> None:
    alert = alert_for(exec_event("/usr/bin/nsenter", "-t 1 -m bash"))
    decision, events, skipped = AlertResponder(authorizer, Recorder()).decide(alert)
    assert decision.allow
    assert (decision.obligations.kill_session, decision.obligations.ban_user) == (True, False)
    assert skipped == []
    (kill,) = events
    assert isinstance(kill, SessionKill)
    assert (kill.session_id, kill.username, kill.by) == ("s-0001", "alice", "worktrace")
    assert "nsenter-target" in kill.reason


def test_low_confidence_rule_applies_nothing(authorizer: Authorizer) -> None:
    alert = alert_for(
        kprobe_event("tcp_connect", [{"sock_arg": {"daddr": "10.96.0.1", "dport": 443}}])
    )
    assert alert.rule_id == "k8s-api-contact"
    decision, events, _ = AlertResponder(authorizer, Recorder()).decide(alert)
    assert decision.allow
    assert (decision.obligations.kill_session, decision.obligations.ban_user) == (False, False)
    assert events == []


def test_attack_path_bans_the_user_too(tmp_path: Path, authorizer: Authorizer) -> None:
    (tmp_path / "r.yaml").write_text(CHAIN)
    engine = Engine(load_rules(tmp_path), anomaly=AnomalyConfig(enabled=False))
    engine.feed(line(exec_event("/usr/bin/one")))
    (alert,) = engine.feed(line(exec_event("/usr/bin/two")))
    assert alert.kind == "attack_path"
    assert alert.confidence == pytest.approx(0.99)
    _, events, _ = AlertResponder(authorizer, Recorder(), ban_seconds=600).decide(alert)
    assert [type(e) for e in events] == [SessionKill, UserBan]
    ban = events[1]
    assert ban.username == "alice"
    assert 590 < (ban.until - ban.at).total_seconds() <= 600


def test_alert_without_session_kills_nothing(authorizer: Authorizer) -> None:
    alert = alert_for(exec_event("/usr/bin/nsenter", "-t 1 bash", labels={"app": "other"}))
    assert alert.session.session_id is None
    decision, events, _ = AlertResponder(authorizer, Recorder()).decide(alert)
    assert decision.obligations.kill_session is False
    assert events == []


def _bundle(tmp_path: Path, decision: str) -> Authorizer:
    (tmp_path / "p.rego").write_text(
        f"package stockade\n\nimport rego.v1\n\ndecision := {decision}\n"
    )
    return Authorizer(settings=AuthzSettings(), bundle_dir=tmp_path)


@pytest.mark.parametrize(
    ("decision", "why"),
    [
        ('{"allow": false, "reasons": ["not today"]}', "denied: not today"),
        # authz types obligations once: an ill-typed one makes the decision a deny naming it
        (
            '{"allow": true, "obligations": {"kill_session": "yes"}}',
            "denied: data.stockade.decision.obligations: obligation kill_session must be a boolean",
        ),
        (
            '{"allow": true, "obligations": {"ban_user": true, "ban_seconds": -5}}',
            "denied: data.stockade.decision.obligations: obligation ban_seconds must be a positive",
        ),
    ],
)
def test_deny_or_ill_typed_obligations_apply_nothing(
    tmp_path: Path, decision: str, why: str
) -> None:
    alert = alert_for(exec_event("/usr/bin/nsenter", "-t 1 -m bash"))
    _, events, skipped = AlertResponder(_bundle(tmp_path, decision), Recorder()).decide(alert)
    assert events == []
    assert skipped[0].startswith(why)


async def test_kill_is_published_to_the_bus_and_audit_stream(
    nats_url: str, authorizer: Authorizer
) -> None:
    bus = await Bus.connect(nats_url, name="worktrace-respond-test")
    await bus.ensure_streams()
    received: asyncio.Queue[bytes] = asyncio.Queue()

    async def on_kill(msg: Any) -> None:
        await received.put(msg.data)

    sub = await bus.nc.subscribe(SUBJECT_SESSION_KILL, cb=on_kill)
    try:
        before = await bus.last_sequence("STOCKADE_AUDIT", SUBJECT_SESSION_KILL)
        alert = alert_for(exec_event("/usr/bin/nsenter", "-t 1 -m bash"))
        response = await AlertResponder(authorizer, bus).respond(alert)
        assert [e.subject for e in response.published] == [SUBJECT_SESSION_KILL]
        data = await asyncio.wait_for(received.get(), 5)
        kill = SessionKill.from_bytes(data)
        assert (kill.session_id, kill.username) == ("s-0001", "alice")
        assert await bus.last_sequence("STOCKADE_AUDIT", SUBJECT_SESSION_KILL) > before
    finally:
        await sub.unsubscribe()
        await bus.close()

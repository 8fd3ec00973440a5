"""Pod labels are believed only in the workspace namespace(s): anyone who may create a Pod
elsewhere can write ``stockade.dev/...`` labels, and must not get a workspace killed or a user
banned by running ``nsenter`` under them.

The event is the real privileged-pod nsenter escape of the samples (namespace ``default``), with
the labels a framing attacker puts on their Pod; the policy answers every alert with
``kill_session`` and ``ban_user`` (the worst case for the victim)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import orjson

from stockade.authz import Authorizer
from stockade.core.settings import AuthzSettings, WorktraceSettings
from stockade.workspace import RenderContext
from stockade.worktrace import (
    WORKSPACE_NAMESPACE,
    AlertResponder,
    AnomalyConfig,
    Engine,
    RuleSource,
    Worktrace,
    load_rules,
)

from .conftest import NSENTER, WORKSPACE_LABELS, exec_event, line

KILL_AND_BAN = '{"allow": true, "obligations": {"kill_session": true, "ban_user": true}}'


class Recorder:
    def __init__(self) -> None:
        self.events: list[Any] = []

    async def publish(self, event: Any, *, ack_timeout: float = 5.0) -> int:
        self.events.append(event)
        return len(self.events)


def _authorizer(tmp_path: Path) -> Authorizer:
    (tmp_path / "p.rego").write_text(
        f"package stockade\n\nimport rego.v1\n\ndecision := {KILL_AND_BAN}\n"
    )
    return Authorizer(settings=AuthzSettings(), bundle_dir=tmp_path)


def _framed(namespace: str | None = None) -> bytes:
    """The sample escape, its Pod labelled as the victim's workspace Pod."""
    raw = json.loads(NSENTER.read_text())
    pod = raw["process_exec"]["process"]["pod"]
    pod["pod_labels"] = dict(pod.get("pod_labels") or {}) | WORKSPACE_LABELS
    if namespace is not None:
        pod["namespace"] = namespace
    return orjson.dumps(raw)


def _engine(**kw: Any) -> Engine:
    return Engine(load_rules(), anomaly=AnomalyConfig(enabled=False), **kw)


def test_the_default_trusts_the_namespace_workspace_pods_are_rendered_in() -> None:
    assert WorktraceSettings().trusted_namespaces == [RenderContext().namespace]
    assert RenderContext().namespace == WORKSPACE_NAMESPACE
    assert _engine().trusted_namespaces == {WORKSPACE_NAMESPACE}


async def test_labels_of_a_pod_in_another_namespace_frame_nobody(tmp_path: Path) -> None:
    """ATTACK: a Pod in ``default`` labelled as alice's workspace runs nsenter. The alert fires
    (the escape is real), tied to its Pod but to no workspace, user or session, and the kill and
    ban policy asks for apply to nobody."""
    (alert,) = _engine().feed(_framed())
    assert alert.rule_id == "nsenter-target"
    assert (alert.pod_namespace, alert.pod_name) == ("default", "privileged-pod")
    info = alert.session
    assert (info.workspace, info.username, info.session_id, info.blueprint) == (
        None,
        None,
        None,
        None,
    )
    recorder = Recorder()
    response = await AlertResponder(_authorizer(tmp_path), recorder).respond(alert)
    assert response.decision.allow
    assert recorder.events == []
    assert response.skipped == [
        "kill_session: the alert has no session",
        "ban_user: the alert has no user",
    ]


async def test_the_same_event_in_the_workspace_namespace_is_attributed(tmp_path: Path) -> None:
    """The control: in ``stockade-workspaces`` the same labels name alice's session."""
    (alert,) = _engine().feed(_framed(WORKSPACE_NAMESPACE))
    info = alert.session
    assert (info.workspace, info.username, info.session_id) == ("ws-alice", "alice", "s-0001")
    recorder = Recorder()
    await AlertResponder(_authorizer(tmp_path), recorder).respond(alert)
    assert sorted(type(e).__name__ for e in recorder.events) == ["SessionKill", "UserBan"]


def test_a_namespace_that_merely_resembles_the_trusted_one_is_not_trusted() -> None:
    for namespace in ("stockade-workspaces-x", "Stockade-Workspaces", "", "stockade"):
        (alert,) = _engine().feed(_framed(namespace))
        assert alert.session.username is None, namespace


def test_an_untrusted_blueprint_label_teaches_no_ancestry() -> None:
    """ATTACK: execs in a foreign Pod labelled with a blueprint would train what is "normal"
    for every workspace of it (poisoning the learning phase)."""
    engine = Engine(load_rules(), anomaly=AnomalyConfig(enabled=True, learning_events=0))
    foreign = copy.deepcopy(exec_event("/usr/bin/ls"))
    foreign["process_exec"]["process"]["pod"]["namespace"] = "default"
    assert list(engine.feed(line(foreign))) == []  # neither scored nor counted
    assert engine._ancestries == {}
    # in the workspace namespace a never seen ancestry is scored
    assert [a.kind for a in engine.feed(line(exec_event("/usr/bin/ls")))] == ["anomaly"]


async def test_the_service_passes_the_setting_to_its_engine(tmp_path: Path) -> None:
    rules = RuleSource()
    assert Worktrace(rules).engine.trusted_namespaces == {WORKSPACE_NAMESPACE}
    settings = WorktraceSettings(trusted_namespaces=["default"])
    engine = Worktrace(rules, settings=settings).engine
    (alert,) = engine.feed(_framed())
    assert alert.session.username == "alice"
    (alert,) = engine.feed(_framed(WORKSPACE_NAMESPACE))
    assert alert.session.username is None  # only the namespaces listed

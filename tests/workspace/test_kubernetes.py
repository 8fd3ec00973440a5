"""The Kubernetes adapter's request shapes (no API server runs here)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from stockade.core.errors import PermissionDenied
from stockade.workspace import (
    DEFAULT_BLUEPRINT,
    Blueprint,
    KubeRequest,
    KubernetesRuntime,
    SessionSpec,
    apply_requests,
    delete_requests,
    exec_argv,
    ready,
    render_workspace,
)


def _rendered() -> Any:
    return render_workspace(DEFAULT_BLUEPRINT, workspace="w1", owner="ann", uid=200002)


def test_apply_is_server_side_apply_in_order() -> None:
    rendered = _rendered()
    requests = apply_requests(rendered)
    paths = [r.path.split("?")[0] for r in requests]
    name = rendered.pod["metadata"]["name"]
    ns = "/namespaces/stockade-workspaces"
    assert paths == [
        f"/api/v1{ns}/persistentvolumeclaims/{name}-home",
        f"/api/v1{ns}/pods/{name}",
        f"/api/v1{ns}/services/{name}",
        f"/apis/networking.k8s.io/v1{ns}/networkpolicies/{name}",
        f"/apis/cilium.io/v2{ns}/ciliumnetworkpolicies/{name}",
    ]
    assert all(r.method == "PATCH" for r in requests)
    assert all(r.content_type == "application/apply-patch+yaml" for r in requests)
    assert all("fieldManager=stockade" in r.path for r in requests)
    assert requests[1].body == rendered.pod


def test_delete_keeps_claims_unless_asked() -> None:
    rendered = _rendered()
    assert not any("persistentvolumeclaims" in r.path for r in delete_requests(rendered))
    assert any(
        "persistentvolumeclaims" in r.path for r in delete_requests(rendered, keep_claims=False)
    )


def test_ready_and_exec() -> None:
    assert ready(
        {"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}
    )
    assert not ready(
        {"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}]}}
    )
    assert not ready({"status": {"phase": "Pending"}})
    argv = exec_argv("kubectl", _rendered(), ["/bin/sh", "-l"], tty=True)
    assert argv[:4] == ["kubectl", "exec", "-i", "-t"]
    assert argv[-5:] == ["-c", "workspace", "--", "/bin/sh", "-l"]


class _Recorder:
    def __init__(self) -> None:
        self.sent: list[KubeRequest] = []

    async def send(self, request: KubeRequest) -> Mapping[str, Any]:
        self.sent.append(request)
        return {"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}


async def test_ensure_applies_then_polls_and_the_gate_refuses() -> None:
    transport = _Recorder()
    runtime = KubernetesRuntime(transport=transport, uid_of=lambda _ws: 200003)
    spec = SessionSpec(session_id="s", username="ann", workspace="w1", workspace_config={})
    await runtime.ensure(spec)
    assert [r.method for r in transport.sent] == ["PATCH"] * 5 + ["GET"]

    def with_level(blueprint: Blueprint, level: str) -> dict[str, Any]:
        security = blueprint.effective_security.model_copy(update={"level": level})
        return blueprint.model_copy(update={"security_context": security}).to_document()

    def spec_for(blueprint: dict[str, Any]) -> SessionSpec:
        return SessionSpec(
            session_id="s", username="ann", workspace="w1", workspace_config={},
            blueprint=blueprint,
        )  # fmt: skip

    # a blueprint stated at baseline renders a Pod that passes baseline: allowed
    await runtime.ensure(spec_for(with_level(DEFAULT_BLUEPRINT, "baseline")))
    # the sidecar claimed to be restricted: the gate refuses before any request
    sent = len(transport.sent)
    bad = spec_for(with_level(DEFAULT_BLUEPRINT.model_copy(update={"podman": True}), "restricted"))
    with pytest.raises(PermissionDenied):
        await runtime.ensure(bad)
    assert len(transport.sent) == sent

"""Rendering: restricted by default, baseline with the sidecar, valid against real schemas."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from stockade.core.errors import InvalidInput
from stockade.workspace import (
    DEFAULT_BLUEPRINT,
    LABEL_USER,
    LABEL_WORKSPACE,
    Blueprint,
    check_object,
    load_blueprint,
    render_workspace,
    validate_object,
)

CUSTOM = load_blueprint(
    """
name: custom
image: registry.example/dev:3
env: {EDITOR: vim}
resources: {cpu: '2', memory: 4Gi}
storages:
  - {name: home, mountPath: /home/dev, home: true, size: 20Gi}
  - {name: cache, mountPath: /var/cache/dev}
initScripts: ['git config --global init.defaultBranch main']
podman: true
network: {class: custom, allow: [github.com, '*.pypi.example', 203.0.113.0/24]}
apps: [{name: web, port: 8080}]
"""
)


def _render(blueprint: Blueprint, workspace: str = "Alice_Dev.1") -> Any:
    return render_workspace(blueprint, workspace=workspace, owner="alice", uid=200123)


def test_default_pod_is_restricted_least_privilege() -> None:
    rendered = _render(DEFAULT_BLUEPRINT)
    spec = rendered.pod["spec"]
    assert rendered.level == "restricted"
    assert check_object(rendered.pod, "restricted") == []
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == 200123
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "hostUsers" not in spec
    (main,) = spec["containers"]
    context = main["securityContext"]
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"] for m in main["volumeMounts"]}
    assert {"/tmp", "/home/workspace"} <= mounts
    assert main["resources"]["limits"] == {"cpu": "500m", "memory": "512Mi"}


def test_labels_names_and_annotations() -> None:
    rendered = _render(DEFAULT_BLUEPRINT)
    meta = rendered.pod["metadata"]
    assert re.match(r"^alice-dev-1-[0-9a-f]{8}$", meta["name"])
    assert meta["labels"] == {LABEL_WORKSPACE: "Alice_Dev.1", LABEL_USER: "alice"}
    assert meta["annotations"]["stockade.dev/workspace-name"] == "Alice_Dev.1"
    for obj in rendered.objects:
        assert len(obj["metadata"]["name"]) <= 63


def test_podman_sidecar_is_baseline_with_user_namespaces() -> None:
    rendered = _render(CUSTOM)
    spec = rendered.pod["spec"]
    assert rendered.level == "baseline"
    assert spec["hostUsers"] is False
    assert check_object(rendered.pod, "baseline") == []
    assert check_object(rendered.pod, "restricted") != []  # stated, not hidden
    workspace, sidecar = spec["containers"]
    assert workspace["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert sidecar["name"] == "podman"
    assert "add" in sidecar["securityContext"]["capabilities"]
    assert spec["initContainers"][0]["securityContext"]["allowPrivilegeEscalation"] is False


def test_network_classes() -> None:
    custom = _render(CUSTOM).cilium_policy["spec"]["egress"]
    fqdns = next(rule for rule in custom if "toFQDNs" in rule)["toFQDNs"]
    assert {"matchName": "github.com"} in fqdns
    assert {"matchPattern": "*.pypi.example"} in fqdns
    assert any(rule.get("toCIDR") == ["203.0.113.0/24"] for rule in custom)
    assert any("dns" in str(rule) for rule in custom)
    assert not any("toEntities" in rule for rule in custom)
    isolated = Blueprint(name="iso", network={"class": "isolated"})
    egress = _render(isolated).network_policy["spec"]["egress"]
    assert len(egress) == 2  # DNS and the broker, nothing else
    open_ = _render(DEFAULT_BLUEPRINT).network_policy["spec"]["egress"][-1]
    assert "10.0.0.0/8" in open_["to"][0]["ipBlock"]["except"]


def test_templates_do_not_render() -> None:
    with pytest.raises(ValueError, match="template"):
        _render(Blueprint(name="t", isTemplate=True))


@pytest.mark.parametrize("blueprint", [DEFAULT_BLUEPRINT, CUSTOM], ids=["default", "custom"])
def test_every_rendered_object_validates(blueprint: Blueprint, crd_schemas: Path) -> None:
    rendered = _render(blueprint)
    kinds = set()
    for obj in rendered.objects:
        validate_object(obj, crd_schemas=crd_schemas)
        kinds.add(obj["kind"])
    assert kinds == {
        "Pod", "Service", "PersistentVolumeClaim", "NetworkPolicy", "CiliumNetworkPolicy"
    }  # fmt: skip


def test_validation_rejects_wrong_objects(crd_schemas: Path) -> None:
    pod = _render(DEFAULT_BLUEPRINT).pod
    pod["spec"]["containers"][0]["securityContextt"] = {}
    with pytest.raises(InvalidInput, match="securityContextt"):
        validate_object(pod)
    cilium = _render(DEFAULT_BLUEPRINT).cilium_policy
    cilium["spec"]["egress"][0]["toFQDN"] = []
    with pytest.raises(InvalidInput, match="CiliumNetworkPolicy"):
        validate_object(cilium, crd_schemas=crd_schemas)
    with pytest.raises(InvalidInput, match="no CRD schema"):
        validate_object(cilium)

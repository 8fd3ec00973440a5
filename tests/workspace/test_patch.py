"""Provisioning patches: applied when harmless, refused when they weaken the Pod."""

from __future__ import annotations

from typing import Any

import pytest

from stockade.core.errors import InvalidInput
from stockade.workspace import DEFAULT_BLUEPRINT, apply_patches, render_workspace


def _pod() -> dict[str, Any]:
    return render_workspace(DEFAULT_BLUEPRINT, workspace="w", owner="o", uid=200001).pod


def test_harmless_patches_apply() -> None:
    patched = apply_patches(
        _pod(),
        {
            "patch:/spec/nodeSelector": {"pool": "dev"},
            "patch:/metadata/labels/team": "blue",
            "patch:/spec/containers/0/env/-": {"name": "X", "value": "1"},
            "record_session": True,
        },
        "restricted",
    )
    assert patched["spec"]["nodeSelector"] == {"pool": "dev"}
    assert patched["metadata"]["labels"]["team"] == "blue"
    assert patched["spec"]["containers"][0]["env"][-1] == {"name": "X", "value": "1"}


@pytest.mark.parametrize(
    ("pointer", "value", "why"),
    [
        ("/spec/containers/0/securityContext/privileged", True, "privileged"),
        ("/spec/securityContext/runAsUser", 0, "runAsUser"),
        ("/spec/containers/0/securityContext/runAsNonRoot", False, "runAsNonRoot"),
        ("/spec/hostNetwork", True, "hostNamespaces"),
        ("/spec/volumes/-", {"name": "root", "hostPath": {"path": "/"}}, "restrictedVolumes"),
        ("/spec/containers/0/securityContext/capabilities/add", ["SYS_ADMIN"], "capabilities"),
        ("/spec/containers/0/securityContext/readOnlyRootFilesystem", False, "readOnlyRoot"),
        ("/spec/automountServiceAccountToken", True, "automountServiceAccountToken"),
        ("/kind", "Deployment", "identity"),
        ("spec", 1, "pointer"),
        ("/spec/containers/9/name", "x", "no list item"),
    ],
)
def test_weakening_patches_are_refused(pointer: str, value: Any, why: str) -> None:
    pod = _pod()
    with pytest.raises(InvalidInput, match=why) as err:
        apply_patches(pod, {f"patch:{pointer}": value}, "restricted")
    assert err.value.field == f"patch:{pointer}"
    assert pod == _pod()  # decide first: nothing applied

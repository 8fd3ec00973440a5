"""What the Podman runtime changes in the rendered Pod, field by field (pure)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from stockade.core.errors import InvalidInput
from stockade.workspace import (
    DEFAULT_BLUEPRINT,
    Blueprint,
    check_object,
    object_name,
    render_workspace,
    translate_for_podman,
)
from stockade.workspace._podman import PodmanLayout
from stockade.workspace._render import TMP_SIZE_LIMIT
from stockade.workspace._volumes import parse_quantity


def test_translation() -> None:
    rendered = render_workspace(DEFAULT_BLUEPRINT, workspace="w", owner="o", uid=200009)
    layout = PodmanLayout(runtime=Path("/data/pods/x"), homes=Path("/data/homes/x"))
    pod, dirs = translate_for_podman(rendered.pod, layout=layout, claims=rendered.claims)
    assert check_object(rendered.pod, "restricted") == []  # the gate sees the rendered Pod
    modes = {name: volume.mode for name, volume in dirs.items()}
    assert modes["tmp"] == 0o1777
    assert modes["storage-home"] == 0o700
    assert dirs["storage-home"].path.parent == layout.homes  # claims persist
    assert dirs["tmp"].path.is_relative_to(layout.runtime)  # emptyDirs go with the Pod
    (main,) = pod["spec"]["containers"]
    assert main["command"] == ["/run/stockade/agent", "/run/stockade/agent.sock"]
    ro = {m["mountPath"] for m in main["volumeMounts"] if m.get("readOnly")}
    assert ro == {"/run/stockade", "/etc/passwd", "/etc/group"}
    # everything security-relevant is carried over unchanged
    assert main["securityContext"] == rendered.pod["spec"]["containers"][0]["securityContext"]
    assert pod["spec"]["securityContext"] == rendered.pod["spec"]["securityContext"]
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert "namespace" not in pod["metadata"]
    assert rendered.pod["spec"]["containers"][0]["command"] != main["command"]  # a copy


def test_every_volume_gets_its_size_and_the_field_it_comes_from() -> None:
    """The claim's ``storage`` and each emptyDir's ``sizeLimit`` (rendered for /tmp by
    default) become the sizes of the host's filesystems; errors name the blueprint field."""
    blueprint = Blueprint(
        name="sized",
        storages=[
            {"name": "data", "mountPath": "/data", "size": "64Mi"},
            {"name": "home", "mountPath": "/home/w", "home": True, "size": "1.5Gi"},
        ],
    )
    rendered = render_workspace(blueprint, workspace="w", owner="o", uid=200009)
    tmp = next(v for v in rendered.pod["spec"]["volumes"] if v["name"] == "tmp")
    assert tmp["emptyDir"] == {"sizeLimit": TMP_SIZE_LIMIT}
    layout = PodmanLayout(runtime=Path("/data/pods/x"), homes=Path("/data/homes/x"))
    _, dirs = translate_for_podman(rendered.pod, layout=layout, claims=rendered.claims)
    assert (dirs["storage-data"].size, dirs["storage-data"].field) == (64 << 20, "storages[0].size")
    assert dirs["storage-home"].size == 3 << 29
    assert (dirs["storage-home"].kind, dirs["tmp"].kind) == ("claim", "emptyDir")
    assert dirs["tmp"].size == parse_quantity(TMP_SIZE_LIMIT, "x") == 1 << 30
    assert dirs["storage-home"].image == layout.homes / f"{object_name('w', 'home')}.img"
    memory = copy.deepcopy(rendered.pod)
    memory["spec"]["volumes"][0]["emptyDir"] = {"medium": "Memory"}  # a patch, unsized
    _, dirs = translate_for_podman(memory, layout=layout, claims=rendered.claims)
    assert (dirs["tmp"].kind, dirs["tmp"].size) == ("memory", 1 << 30)  # bounded anyway
    with pytest.raises(InvalidInput, match="has no size"):  # a claim without its PVC
        translate_for_podman(rendered.pod, layout=layout)
    host = copy.deepcopy(rendered.pod)
    host["spec"]["volumes"][0] = {"name": "tmp", "hostPath": {"path": "/"}}
    with pytest.raises(InvalidInput, match=r"spec.volumes\[0\]"):
        translate_for_podman(host, layout=layout, claims=rendered.claims)


@pytest.mark.parametrize(
    ("value", "size"), [("16Mi", 16 << 20), ("1G", 10**9 + 1536), ("4Mi", 4 << 20)]
)
def test_quantities(value: str, size: int) -> None:
    assert parse_quantity(value, "f") == size


@pytest.mark.parametrize("value", ["1Mi", "100m", "lots", "1Pi"])
def test_bad_or_tiny_quantities_are_refused_naming_the_field(value: str) -> None:
    with pytest.raises(InvalidInput, match=r"^storages\[2\]\.size: "):
        parse_quantity(value, "storages[2].size")

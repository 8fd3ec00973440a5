"""What the Podman runtime changes in the rendered Pod, field by field (pure)."""

from __future__ import annotations

from pathlib import Path

from stockade.workspace import (
    DEFAULT_BLUEPRINT,
    check_object,
    render_workspace,
    translate_for_podman,
)
from stockade.workspace._podman import PodmanLayout


def test_translation() -> None:
    rendered = render_workspace(DEFAULT_BLUEPRINT, workspace="w", owner="o", uid=200009)
    layout = PodmanLayout(runtime=Path("/data/pods/x"), homes=Path("/data/homes/x"))
    pod, dirs = translate_for_podman(rendered.pod, layout=layout)
    assert check_object(rendered.pod, "restricted") == []  # the gate sees the rendered Pod
    modes = {name: mode for name, (_, mode) in dirs.items()}
    assert modes["tmp"] == 0o1777
    assert modes["storage-home"] == 0o700
    assert dirs["storage-home"][0].parent == layout.homes  # claims persist
    assert dirs["tmp"][0].is_relative_to(layout.runtime)  # emptyDirs go with the Pod
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

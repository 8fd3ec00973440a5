"""`stockade images inventory`: images from manifests, add-ons, blueprints and node lists."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stockade.cli import app
from stockade.images._inventory import split_reference

DEPLOY = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: broker}
spec:
  template:
    spec:
      initContainers:
      - {name: init, image: "busybox:1.36"}
      containers:
      - {name: broker, image: "registry.local:5000/stockade/broker:0.1.0"}
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: sweep}
spec:
  jobTemplate:
    spec:
      template:
        spec:
          containers:
          - {name: sweep, image: "ghcr.io/x/sweep@sha256:%s"}
""" % ("a" * 64)

NODES = {
    "kind": "NodeList",
    "items": [
        {
            "metadata": {"name": "node-1"},
            "status": {
                "images": [
                    {
                        "names": [
                            "docker.io/library/nginx@sha256:" + "b" * 64,
                            "docker.io/library/nginx:1.25",
                        ],
                        "sizeBytes": 1234,
                    }
                ]
            },
        }
    ],
}


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("nginx", ("nginx", "latest", None)),
        ("registry.local:5000/a/b:1.0", ("registry.local:5000/a/b", "1.0", None)),
        ("registry.local:5000/a/b", ("registry.local:5000/a/b", "latest", None)),
        ("a/b@sha256:" + "c" * 64, ("a/b", "", "sha256:" + "c" * 64)),
    ],
)
def test_split_reference(ref: str, expected: tuple[str, str, str | None]) -> None:
    assert split_reference(ref) == expected


def test_inventory_json_in_k2s_shapes(tmp_path: Path) -> None:
    chart = tmp_path / "chart"
    chart.mkdir()
    (chart / "deploy.yaml").write_text(DEPLOY)
    addon = tmp_path / "addon.yaml"
    addon.write_text(
        "kind: Pod\nspec:\n  containers:\n  - {name: m, image: 'quay.io/metrics/server:v2'}\n"
    )
    blueprint = tmp_path / "bp.json"
    blueprint.write_text(json.dumps({"name": "py", "image": "python:3.12-slim"}))
    nodes = tmp_path / "nodes.json"
    nodes.write_text(json.dumps(NODES))
    code, out, err = run(
        "images", "inventory", "--manifests", str(chart), "--addons", str(addon),
        "--blueprints", str(blueprint), "--nodes-json", str(nodes), "--json",
    )  # fmt: skip
    assert code == 0, err
    doc = json.loads(out)
    broker = "registry.local:5000/stockade/broker"
    assert {
        "ImageName": broker,
        "ImageVersion": "0.1.0",
        "ImageType": "core",
        "ImageRef": f"{broker}:0.1.0",
    } in doc["images"]
    types = {i["ImageRef"]: i["ImageType"] for i in doc["images"]}
    assert types["quay.io/metrics/server:v2"] == "addons"
    assert types["busybox:1.36"] == "core"
    assert types["python:3.12-slim"] == "core"
    assert types["ghcr.io/x/sweep@sha256:" + "a" * 64] == "core"
    assert doc["node_images"] == [
        {"ImageId": "sha256:" + "b" * 64, "Repository": "docker.io/library/nginx", "Tag": "1.25",
         "Node": "node-1", "Size": 1234}
    ]  # fmt: skip
    code, out, _ = run("images", "inventory", "--manifests", str(chart))
    assert code == 0
    assert "busybox" in out


def test_bad_yaml_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: Pod\nspec: [unclosed\n")
    code, _, err = run("images", "inventory", "--manifests", str(bad))
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert f"{bad}:" in err


def test_hostile_image_value(tmp_path: Path) -> None:
    bad = tmp_path / "pod.yaml"
    bad.write_text('kind: Pod\nspec:\n  containers:\n  - {name: a, image: "x; rm -rf /"}\n')
    code, _, err = run("images", "inventory", "--manifests", str(bad))
    assert code == 2
    assert "not an image reference" in err


def test_missing_path(tmp_path: Path) -> None:
    code, _, err = run("images", "inventory", "--manifests", str(tmp_path / "nope"))
    assert code == 2
    assert "no such file" in err


def test_cluster_unreachable_is_one_line(tmp_path: Path) -> None:
    """The Kubernetes adapter against a refused loopback port: exit 1, one line, no traceback."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {server: 'http://127.0.0.1:PORT'}\n"
        "contexts:\n- name: c\n  context: {cluster: c, user: u}\ncurrent-context: c\n"
        "users:\n- name: u\n  user: {}\n".replace("PORT", str(port))
    )
    code, _, err = run("images", "inventory", "--cluster", "--kubeconfig", str(kubeconfig))
    assert code == 1
    assert len(err.strip().splitlines()) == 1
    assert "kubectl get nodes failed" in err

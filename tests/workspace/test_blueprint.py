"""Blueprints: defaults, template inheritance, and what a repository file may never set."""

from __future__ import annotations

import pytest

from stockade.core.errors import InvalidInput
from stockade.workspace import (
    DEFAULT_BLUEPRINT,
    Blueprint,
    load_blueprint,
    parse_repository_file,
    resolve,
)


def test_defaults_are_k8shells() -> None:
    blueprint = Blueprint(name="plain")
    assert blueprint.effective_resources.cpu == "500m"
    assert blueprint.effective_resources.memory == "512Mi"
    assert blueprint.effective_network.class_ == "workspace"
    assert blueprint.level == "restricted"
    assert DEFAULT_BLUEPRINT.level == "restricted"


def test_podman_sidecar_means_baseline() -> None:
    assert Blueprint(name="dind", podman=True).level == "baseline"


def test_template_inheritance_merges_fields_and_env() -> None:
    base = load_blueprint(
        "name: base\nisTemplate: true\nimage: img/base:1\nenv: {A: '1', B: '1'}\n"
        "resources: {cpu: '2', memory: 4Gi}\ninitScripts: ['echo base']\n"
    )
    child = load_blueprint("name: child\ntemplate: base\nenv: {B: '2'}\npodman: true\n")
    merged = resolve("child", {"base": base, "child": child})
    assert merged.image == "img/base:1"
    assert merged.env == {"A": "1", "B": "2"}
    assert merged.effective_resources.cpu == "2"
    assert merged.podman is True
    assert merged.is_template is False
    assert merged.init_scripts == ("echo base",)


def test_template_cycle_and_missing_parent_name_the_field() -> None:
    a = Blueprint(name="a", template="b")
    b = Blueprint(name="b", template="a")
    with pytest.raises(InvalidInput, match="cycle") as cycle:
        resolve("a", {"a": a, "b": b})
    assert cycle.value.field == "template"
    with pytest.raises(InvalidInput) as missing:
        resolve("a", {"a": a})
    assert missing.value.field == "template"


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("name: Bad_Name\n", "blueprint: name"),
        ("name: x\nresources: {cpu: lots}\n", "blueprint: resources.cpu"),
        ("name: x\nenv: {HOME: /root}\n", "blueprint: env"),
        ("name: x\nprivileged: true\n", "blueprint: privileged"),
        ("name: x\nnetwork: {class: open}\n", "blueprint: network.class"),
        ("name: x\nstorages: [{name: h, mountPath: ../etc}]\n", "blueprint: storages.0.mountPath"),
        ("- not a mapping\n", "blueprint"),
        ("name: [unclosed\n", "blueprint"),
    ],
)
def test_bad_blueprints_name_the_field(text: str, field: str) -> None:
    with pytest.raises(InvalidInput) as err:
        load_blueprint(text)
    assert err.value.field == field


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("securityContext: {runAsUser: 0}\n", ".stockade.yaml: securityContext"),
        ("privileged: true\n", ".stockade.yaml: privileged"),
        ("apps: [{name: x, privileged: true}]\n", ".stockade.yaml: apps[0].privileged"),
        ("hostNetwork: true\n", ".stockade.yaml: hostNetwork"),
        ("hostPID: true\n", ".stockade.yaml: hostPID"),
        ("volumes: [{name: v, hostPath: {path: /}}]\n", ".stockade.yaml: volumes"),
        ("env: {A: b}\nextra: {hostPath: {path: /}}\n", ".stockade.yaml: extra.hostPath"),
        (
            "apps: [{name: a, capabilities: {add: [SYS_ADMIN]}}]\n",
            ".stockade.yaml: apps[0].capabilities",
        ),
        ("podman: true\n", ".stockade.yaml: podman"),
        ("network: {class: workspace}\n", ".stockade.yaml: network"),
        ("resources: {cpu: '64'}\n", ".stockade.yaml: resources"),
        ("image: a b\n", ".stockade.yaml: image"),
        ("mystery: 1\n", ".stockade.yaml: mystery"),
    ],
)
def test_repository_file_refusals_name_the_field(text: str, field: str) -> None:
    with pytest.raises(InvalidInput) as err:
        parse_repository_file(text)
    assert err.value.field == field


def test_repository_file_sets_image_env_scripts_and_apps_only() -> None:
    repo = parse_repository_file(
        "image: ghcr.example/app:2\nenv: {GOFLAGS: -mod=mod}\ninitScripts: ['make deps']\n"
        "apps: [{name: web, command: [npm, start], port: 3000}]\n"
    )
    secured = Blueprint(name="locked", image="base:1", securityContext={"runAsUser": 5000})
    applied = repo.apply(secured)
    assert applied.image == "ghcr.example/app:2"
    assert applied.env == {"GOFLAGS": "-mod=mod"}
    assert applied.init_scripts == ("make deps",)
    assert applied.apps is not None
    assert applied.apps[0].port == 3000
    assert applied.security_context == secured.security_context
    assert parse_repository_file("") == parse_repository_file("{}")

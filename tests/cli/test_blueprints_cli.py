"""``stockade blueprints`` and ``stockade pod-security check`` on real files and a real store."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
import yaml
from typer.testing import CliRunner

from stockade.cli import _common, app
from tests.workspace.conftest import shared_testdata

runner = CliRunner()
FIXTURES = shared_testdata() / "pod-security" / "test" / "testdata"


@pytest.fixture(autouse=True)
def _data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("STOCKADE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    _common.settings.cache_clear()
    yield
    _common.settings.cache_clear()
    structlog.reset_defaults()


def _write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_add_list_show_render_remove(tmp_path: Path) -> None:
    base = _write(tmp_path, "base.yaml", "name: base\nisTemplate: true\nimage: img/dev:1\n")
    child = _write(tmp_path, "dev.yaml", "name: dev\ntemplate: base\nenv: {A: '1'}\n")
    assert runner.invoke(app, ["blueprints", "add", base]).exit_code == 0
    result = runner.invoke(app, ["blueprints", "add", child])
    assert result.exit_code == 0, result.output
    listed = json.loads(runner.invoke(app, ["blueprints", "list", "--json"]).output)
    assert [b["name"] for b in listed] == ["base", "dev"]
    shown = json.loads(runner.invoke(app, ["blueprints", "show", "dev", "--json"]).output)
    assert shown["document"]["image"] == "img/dev:1"
    rendered = runner.invoke(app, ["blueprints", "render", "dev", "--format", "json"])
    assert rendered.exit_code == 0, rendered.output
    kinds = [item["kind"] for item in json.loads(rendered.output)["items"]]
    assert "Pod" in kinds
    assert "CiliumNetworkPolicy" in kinds
    as_yaml = list(yaml.safe_load_all(runner.invoke(app, ["blueprints", "render", "dev"]).output))
    assert len(as_yaml) == len(kinds)
    refused = runner.invoke(app, ["blueprints", "remove", "base"])
    assert refused.exit_code == 2
    assert "template of dev" in refused.output
    assert runner.invoke(app, ["blueprints", "add", child]).exit_code == 2  # exists
    assert runner.invoke(app, ["blueprints", "remove", "dev"]).exit_code == 0
    assert runner.invoke(app, ["blueprints", "show", "dev"]).exit_code == 2


def test_validate_names_the_field(tmp_path: Path) -> None:
    good = _write(tmp_path, "ok.yaml", "name: ok\npodman: true\n")
    result = runner.invoke(app, ["blueprints", "validate", good])
    assert result.exit_code == 0, result.output
    assert "level baseline" in result.output
    bad = _write(tmp_path, "bad.yaml", "name: ok\nresources: {memory: huge}\n")
    result = runner.invoke(app, ["blueprints", "validate", bad])
    assert result.exit_code == 2
    assert "resources.memory" in result.output
    for text, field in [
        ("securityContext: {privileged: true}\n", "securityContext"),
        ("apps: [{name: a, privileged: true}]\n", "apps[0].privileged"),
        ("volumes: [{name: h, hostPath: {path: /}}]\n", "volumes"),
    ]:
        repo = _write(tmp_path, ".stockade.yaml", text)
        result = runner.invoke(app, ["blueprints", "validate", "--repository", repo])
        assert result.exit_code == 2
        assert field in result.output
        assert "Traceback" not in result.output


def test_pod_security_check_exit_codes(tmp_path: Path) -> None:
    passing = str(FIXTURES / "restricted/v1.35/pass/base.yaml")
    failing = str(FIXTURES / "restricted/v1.35/fail/privileged0.yaml")
    ok = runner.invoke(app, ["pod-security", "check", passing])
    assert ok.exit_code == 0, ok.output
    result = runner.invoke(app, ["pod-security", "check", passing, failing])
    assert result.exit_code == 1
    assert "Pod/privileged0: privileged:" in result.output
    baseline = runner.invoke(
        app,
        [
            "pod-security",
            "check",
            "--level",
            "baseline",
            str(FIXTURES / "baseline/v1.35/pass/base.yaml"),
        ],
    )
    assert baseline.exit_code == 0
    garbage = _write(tmp_path, "x.yaml", "a: [\n")
    assert runner.invoke(app, ["pod-security", "check", garbage]).exit_code == 2
    assert (
        runner.invoke(app, ["pod-security", "check", str(tmp_path / "missing.yaml")]).exit_code == 2
    )

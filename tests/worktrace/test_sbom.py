"""Drop-and-execute against the image's SBOM file list."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stockade.core.errors import InvalidInput
from stockade.worktrace import Engine, image_files, load_rules, load_sbom

from .conftest import exec_event, line

IMAGE = "registry.local/python:3.12"
SBOM = {
    "bomFormat": "CycloneDX",
    "specVersion": "1.6",
    "components": [
        {"type": "library", "name": "python3", "properties": [
            {"name": "syft:location:0:path", "value": "/usr/bin/python3"},
            {"name": "syft:package:type", "value": "deb"},
        ]},
        {"type": "file", "name": "/bin/bash"},
        {"type": "file", "name": "relative/ignored"},
        {"type": "library", "name": "nested", "components": [{"type": "file", "name": "/bin/ls"}]},
    ],
}  # fmt: skip


def test_sbom_lists_files_and_package_locations(tmp_path: Path) -> None:
    path = tmp_path / "sbom.json"
    path.write_text(json.dumps(SBOM))
    assert load_sbom(path) == {"/usr/bin/python3", "/bin/bash", "/bin/ls"}


def test_binary_missing_from_the_sbom_alerts(tmp_path: Path) -> None:
    path = tmp_path / "sbom.json"
    path.write_text(json.dumps(SBOM))
    engine = Engine(load_rules(), image_files=image_files([f"{IMAGE}={path}"]))
    assert engine.feed(line(exec_event("/bin/ls"))) == ()
    alerts = engine.feed(line(exec_event("/usr/local/bin/dropped")))
    assert [a.rule_id for a in alerts] == ["drop-exec-not-in-image"]
    other = exec_event("/usr/local/bin/dropped")
    other["process_exec"]["process"]["pod"]["container"]["image"]["name"] = "unknown:1"
    assert engine.feed(line(other)) == ()  # no SBOM for that image: no opinion


@pytest.mark.parametrize(
    ("content", "problem"),
    [("{", "not JSON"), ('{"bomFormat": "SPDX"}', "not a CycloneDX"), ("[]", "not a CycloneDX")],
)
def test_bad_sboms_are_named(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "sbom.json"
    path.write_text(content)
    with pytest.raises(InvalidInput) as info:
        load_sbom(path)
    assert info.value.field == str(path)
    assert problem in info.value.problem
    with pytest.raises(InvalidInput, match="IMAGE=SBOM_FILE"):
        image_files(["no-equals-sign"])


def test_scan_takes_sboms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from stockade.cli import _common, app

    monkeypatch.chdir(tmp_path)
    _common.settings.cache_clear()
    sbom = tmp_path / "sbom.json"
    sbom.write_text(json.dumps(SBOM))
    export = tmp_path / "export.log"
    export.write_bytes(line(exec_event("/usr/local/bin/dropped")) + b"\n")
    result = CliRunner().invoke(
        app, ["worktrace", "scan", str(export), "--sbom", f"{IMAGE}={sbom}", "--json"]
    )
    assert result.exit_code == 1, result.output
    assert [a["rule_id"] for a in json.loads(result.stdout)["alerts"]] == ["drop-exec-not-in-image"]
    _common.settings.cache_clear()

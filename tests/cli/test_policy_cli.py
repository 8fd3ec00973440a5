"""`stockade policy eval|test` on the shipped bundle and on a broken one (acceptance 2)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

import stockade.authz
from stockade.cli import app

runner = CliRunner()


def _doc(roles: list[str], action: str = "ssh.shell", owner: str = "alice") -> str:
    return json.dumps(
        {
            "action": action,
            "resource": {"kind": "workspace", "name": "ws", "owner": owner, "labels": {}},
            "context": {"user": {"name": "alice", "roles": roles, "groups": []}},
        }
    )


def test_shipped_bundle_passes_its_tests() -> None:
    result = runner.invoke(app, ["policy", "test"])
    assert result.exit_code == 0, result.output
    assert "PASS" in result.output


@pytest.mark.parametrize(
    ("roles", "expected"),
    [
        (["developer"], {"record_session": False, "sudo": False}),
        (["contractor"], {"record_session": True, "record_input": True, "sudo": False}),
        (["sudoer"], {"sudo": True, "record_session": False}),
        (["tunneler"], {"sudo": False}),
    ],
)
def test_eval_gives_documented_obligations(roles: list[str], expected: dict[str, object]) -> None:
    result = runner.invoke(app, ["policy", "eval", "--input", "-"], input=_doc(roles))
    assert result.exit_code == 0, result.output
    decision = json.loads(result.stdout)
    assert decision["allow"] is True
    obligations = decision["obligations"]
    assert obligations["max_session_seconds"] == 28800
    assert obligations["agent_forwarding"] is True
    for key, value in expected.items():
        assert obligations.get(key, False) == value, key  # defaults (false) are left out


def test_eval_denies_foreign_workspace_with_reason() -> None:
    result = runner.invoke(
        app, ["policy", "eval", "--input", "-"], input=_doc(["developer"], owner="bob")
    )
    decision = json.loads(result.stdout)
    assert decision["allow"] is False
    assert any("bob" in reason for reason in decision["reasons"])


def test_malformed_input_exits_2() -> None:
    result = runner.invoke(app, ["policy", "eval", "--input", "-"], input="{not json")
    assert result.exit_code == 2
    assert "input" in result.stderr


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    for source in (Path(stockade.authz.__file__).parent / "policies").glob("*.rego"):
        (bundle / source.name).write_text(source.read_text())
    broken = bundle / "broken.rego"
    broken.write_text("package stockade.extra\n\nimport rego.v1\n\nallow if {\n  input.x ==\n")
    result = runner.invoke(app, ["policy", "test", str(bundle)])
    assert result.exit_code == 2, result.output
    assert re.search(r"broken\.rego:\d+", result.stderr), result.stderr

    evaluated = runner.invoke(
        app, ["policy", "eval", "--bundle", str(bundle), "--input", "-"], input=_doc(["admin"])
    )
    assert evaluated.exit_code == 2
    assert re.search(r"broken\.rego:\d+", evaluated.stderr), evaluated.stderr

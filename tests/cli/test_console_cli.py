"""``stockade console login``: refuses without a running console, for an unknown user, and for a
user without a console role, in one line each and without a traceback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from typer.testing import CliRunner

from stockade.cli import _common, app


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    data = tmp_path / "data"
    monkeypatch.setenv("STOCKADE_DATA_DIR", str(data))
    monkeypatch.delenv("STOCKADE_DATABASE_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    _common.settings.cache_clear()
    yield data
    _common.settings.cache_clear()
    structlog.reset_defaults()


def _status(data_dir: Path) -> None:
    run = data_dir / "run"
    run.mkdir(parents=True, exist_ok=True)
    listeners = [{"service": "web console", "address": "https://127.0.0.1:1/console/"}]
    (run / "status.json").write_text(json.dumps({"listeners": listeners}))


def test_without_a_running_console_it_says_so(data_dir: Path) -> None:
    result = CliRunner().invoke(app, ["console", "login", "ada"])
    assert result.exit_code != 0
    assert "no running stockade up serves the console" in result.output
    assert "Traceback" not in result.output


def test_unknown_user_and_user_without_a_console_role_are_refused(data_dir: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(app, ["users", "add", "dev", "--role", "developer"]).exit_code == 0
    _status(data_dir)
    unknown = runner.invoke(app, ["console", "login", "nobody"])
    assert unknown.exit_code == 2, unknown.output
    assert "nobody" in unknown.output
    refused = runner.invoke(app, ["console", "login", "dev"])
    assert refused.exit_code == 2, refused.output
    assert "console.view requires role admin or auditor" in refused.output
    assert "Traceback" not in refused.output + unknown.output

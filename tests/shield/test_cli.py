"""``stockade shield`` commands with nothing running (temporary embedded nats-server)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from typer.testing import CliRunner

from stockade.cli import _common
from stockade.cli.shield import app


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    monkeypatch.setenv("STOCKADE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("STOCKADE_NATS_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    _common.settings.cache_clear()
    yield CliRunner()
    _common.settings.cache_clear()
    structlog.reset_defaults()  # the commands bound logging to this test's captured stderr


def test_ban_list_unban_status(runner: CliRunner) -> None:
    result = runner.invoke(app, ["ban", "198.51.100.7", "--for", "1h", "--reason", "scanner"])
    assert result.exit_code == 0, result.output
    assert "banned 198.51.100.7 for 1h" in result.output
    listed = runner.invoke(app, ["list", "--json"])
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout)
    assert [(r["source"], r["strikes"], r["reason"], r["active"]) for r in rows] == [
        ("198.51.100.7", 1, "scanner", True)
    ]
    table = runner.invoke(app, ["list"])
    assert "198.51.100.7" in table.output
    status = runner.invoke(app, ["status", "--json"])
    assert json.loads(status.stdout)["active_bans"] == 1
    assert runner.invoke(app, ["unban", "198.51.100.7"]).exit_code == 0
    assert json.loads(runner.invoke(app, ["list", "--json"]).stdout) == []
    missing = runner.invoke(app, ["unban", "198.51.100.7"])
    assert missing.exit_code == 2


def test_ban_allowlisted_refused(runner: CliRunner) -> None:
    result = runner.invoke(app, ["ban", "127.0.0.1"])
    assert result.exit_code == 2
    assert "allowlisted" in result.output


@pytest.mark.parametrize("args", [["ban", "not-an-ip"], ["ban", "10.0.0.1", "--for", "soon"]])
def test_bad_input_exit_2(runner: CliRunner, args: list[str]) -> None:
    assert runner.invoke(app, args).exit_code == 2

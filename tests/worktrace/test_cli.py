"""``stockade worktrace policy|scan|alerts`` through the real command."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
import yaml
from typer.testing import CliRunner

from stockade.bus import Bus
from stockade.cli import _common, app
from stockade.worktrace import BusAlertSink, Engine, PolicyValidator, load_rules

from .conftest import GKE, NSENTER, SCHEMAS, exec_event, line


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    monkeypatch.setenv("STOCKADE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("STOCKADE_NATS_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    _common.settings.cache_clear()
    yield CliRunner()
    _common.settings.cache_clear()
    structlog.reset_defaults()


def test_policy_writes_a_valid_policy(runner: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "policy.yaml"
    result = runner.invoke(
        app, ["worktrace", "policy", "--schema-dir", str(SCHEMAS), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    docs = list(yaml.safe_load_all(out.read_text()))
    assert docs[0]["kind"] == "TracingPolicy"
    assert PolicyValidator(SCHEMAS).errors(docs[0]) == []
    as_json = runner.invoke(app, ["worktrace", "policy", "--json"])
    assert json.loads(as_json.stdout) == docs


def test_policy_with_broken_rules_is_one_line_exit_2(runner: CliRunner, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - id: x\n    confidence: 2\n")
    result = runner.invoke(app, ["worktrace", "policy", "--rules", str(bad)])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {bad}:3: rules[0].confidence: Input should be less than or equal to 1"
    ]


def test_scan_exit_codes(runner: CliRunner, tmp_path: Path) -> None:
    benign = runner.invoke(app, ["worktrace", "scan", str(GKE)])
    assert benign.exit_code == 0, benign.output
    assert "3 events" in benign.stderr
    export = tmp_path / "export.log"
    export.write_bytes(
        GKE.read_bytes()
        + line(json.loads(NSENTER.read_text()))
        + b"\n"
        + b'{"process_connect": {}}\nnot json\n'
    )
    hit = runner.invoke(app, ["worktrace", "scan", str(export), "--json"])
    assert hit.exit_code == 1
    report = json.loads(hit.stdout)
    assert [a["rule_id"] for a in report["alerts"]] == ["nsenter-target"]
    assert report["alerts"][0]["pod_name"] == "privileged-pod"
    assert report["stats"] == {
        "events": 4,
        "unknown": 1,
        "malformed": 1,
        "alerts": 1,
        "processes": 8,
        "fd_tables": 0,
        "fd_evicted_armed": 0,
    }


def test_scan_from_stdin(runner: CliRunner) -> None:
    data = line(exec_event("/dev/shm/x")) + b"\n"
    result = runner.invoke(app, ["worktrace", "scan", "-", "--json"], input=data)
    assert result.exit_code == 1
    assert json.loads(result.stdout)["alerts"][0]["rule_id"] == "exec-dev-shm"


def test_scan_missing_file_exit_2(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(app, ["worktrace", "scan", str(tmp_path / "nope.log")])
    assert result.exit_code == 2
    assert "cannot read" in result.stderr


def test_alerts_lists_what_the_sink_stored(
    runner: CliRunner, nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def publish() -> None:
        bus = await Bus.connect(nats_url, name="worktrace-cli-test")
        await bus.ensure_streams()
        engine = Engine(load_rules())
        sink = BusAlertSink(bus)
        await sink.emit(engine.feed(line(exec_event("/usr/bin/nsenter", "--target 1 bash"))))
        assert sink.published == 1
        await bus.close()

    asyncio.run(publish())
    monkeypatch.setenv("STOCKADE_NATS_URL", nats_url)
    _common.settings.cache_clear()
    result = runner.invoke(app, ["worktrace", "alerts", "--since", "10m", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    mine = [r for r in rows if r["arguments"] == "--target 1 bash"]
    assert len(mine) == 1
    assert (mine[0]["username"], mine[0]["session_id"]) == ("alice", "s-0001")
    assert mine[0]["event"]["process_exec"]["process"]["binary"] == "/usr/bin/nsenter"
    bad = runner.invoke(app, ["worktrace", "alerts", "--since", "soon"])
    assert bad.exit_code == 2

"""``stockade serve``: bad settings are one line naming the setting, exit 2, nothing started."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from typer.testing import CliRunner

from stockade.cli import _common, app

runner = CliRunner()


@pytest.fixture(autouse=True)
def _env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("STOCKADE_BUS__URL", "STOCKADE_PEERS__IDENTITY", "STOCKADE_PEERS__AUTHZ"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("STOCKADE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("STOCKADE_TLS__DIRECTORY", str(tmp_path / "tls"))
    monkeypatch.chdir(tmp_path)
    _common.settings.cache_clear()
    yield
    _common.settings.cache_clear()
    structlog.reset_defaults()


def _one_line_error(args: list[str], needle: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert needle in lines[0], lines[0]


def test_help_names_every_service_and_the_peers() -> None:
    result = runner.invoke(app, ["serve", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for word in ("identity", "authz", "broker", "shield", "audit", "gateway", "PEERS__IDENTITY"):
        assert word in result.stdout


def test_unknown_service() -> None:
    _one_line_error(["serve", "sshd"], "unknown service 'sshd'")


@pytest.mark.parametrize("service", ["gateway", "broker"])
def test_a_service_that_needs_identity_says_which_setting(
    service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STOCKADE_BUS__URL", "nats://127.0.0.1:1")
    _one_line_error(["serve", service], "STOCKADE_PEERS__IDENTITY")


def test_authz_peer_is_needed_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STOCKADE_BUS__URL", "nats://127.0.0.1:1")
    monkeypatch.setenv("STOCKADE_PEERS__IDENTITY", "127.0.0.1:7443")
    _one_line_error(["serve", "gateway"], "STOCKADE_PEERS__AUTHZ")


@pytest.mark.parametrize("bad", ["identity", "127.0.0.1", "127.0.0.1:0", "h:99999", "h:80/x"])
def test_a_malformed_peer_address(bad: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STOCKADE_PEERS__IDENTITY", bad)
    _one_line_error(["serve", "gateway"], "peers.identity")


def test_split_services_need_one_shared_ca(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STOCKADE_TLS__DIRECTORY", raising=False)
    monkeypatch.setenv("STOCKADE_BUS__URL", "nats://127.0.0.1:1")
    _one_line_error(["serve", "authz"], "STOCKADE_TLS__DIRECTORY")


def test_a_split_service_needs_an_external_bus() -> None:
    _one_line_error(["serve", "shield"], "STOCKADE_BUS__URL")


def test_heartbeat_timeout_below_two_beats_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STOCKADE_GATEWAY__HEARTBEAT_INTERVAL", "2")
    monkeypatch.setenv("STOCKADE_GATEWAY__HEARTBEAT_TIMEOUT", "3")
    _one_line_error(["serve", "gateway"], "heartbeat_timeout")


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({}, "VAULT_ADDR"),
        ({"VAULT_ADDR": "bao.internal:8200"}, "VAULT_ADDR"),  # no scheme
        ({"VAULT_ADDR": "http://127.0.0.1:1"}, "VAULT_TOKEN"),
        (
            {"VAULT_ADDR": "http://127.0.0.1:1", "STOCKADE_VAULT__AUTH_METHOD": "approle"},
            "vault.auth_method",
        ),
        (
            {"VAULT_ADDR": "http://127.0.0.1:1", "STOCKADE_VAULT__AUTH_METHOD": "kubernetes"},
            "vault.kubernetes_role",
        ),
    ],
)
def test_openbao_pki_certificates_need_openbao_settings(
    env: dict[str, str], needle: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``tls.source = "openbao-pki"`` is refused before anything starts when OpenBao cannot be
    reached or logged in to, naming the setting."""
    for name in ("VAULT_ADDR", "VAULT_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("STOCKADE_BUS__URL", "nats://127.0.0.1:1")
    monkeypatch.setenv("STOCKADE_TLS__SOURCE", "openbao-pki")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    _one_line_error(["serve", "authz"], needle)


def test_an_unreachable_openbao_is_one_line(monkeypatch: pytest.MonkeyPatch, nats_url: str) -> None:
    monkeypatch.setenv("STOCKADE_BUS__URL", nats_url)
    monkeypatch.setenv("STOCKADE_API__PORT", "0")
    monkeypatch.setenv("STOCKADE_TLS__SOURCE", "openbao-pki")
    monkeypatch.setenv("VAULT_ADDR", "http://127.0.0.1:1")
    monkeypatch.setenv("VAULT_TOKEN", "s.not-a-real-token")
    result = runner.invoke(app, ["serve", "authz"])
    assert result.exit_code != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "PKI issue at http://127.0.0.1:1/v1/pki/issue/stockade failed" in lines[0]
    assert "s.not-a-real-token" not in result.output

"""The settings tree: env, aliases, TOML, errors that name the key."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from stockade.core import ConfigError, InvalidInput, load_settings, parse_duration
from stockade.core.durations import format_duration


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("STOCKADE_") or key.startswith("VAULT_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


def test_defaults_bind_loopback() -> None:
    settings = load_settings()
    assert settings.gateway.host == "127.0.0.1"
    assert settings.api.host == "127.0.0.1"
    assert settings.broker.host == "127.0.0.1"
    assert settings.database_url.endswith(".stockade/stockade.db")


def test_env_nested_and_aliases(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STOCKADE_GATEWAY__PORT", "2300")
    monkeypatch.setenv("STOCKADE_NATS_URL", "nats://127.0.0.1:4333")
    monkeypatch.setenv("VAULT_ADDR", "http://127.0.0.1:8200")
    monkeypatch.setenv("VAULT_TOKEN", "root-token")
    settings = load_settings()
    assert settings.gateway.port == 2300
    assert settings.bus.url == "nats://127.0.0.1:4333"
    assert settings.vault.addr == "http://127.0.0.1:8200"
    assert settings.vault.token is not None
    assert "root-token" not in repr(settings)


def test_toml_file_and_env_priority(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "stockade.toml").write_text("[identity]\ntoken_ttl = 600\n[gateway]\nport = 2400\n")
    monkeypatch.setenv("STOCKADE_GATEWAY__PORT", "2500")
    settings = load_settings()
    assert settings.identity.token_ttl == 600
    assert settings.gateway.port == 2500


def test_bad_value_names_key_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STOCKADE_IDENTITY__TOKEN_TTL", "-5")
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert "identity.token_ttl" in str(err.value)
    assert "STOCKADE_IDENTITY__TOKEN_TTL" in str(err.value)


def test_unknown_toml_key_is_refused(tmp_path: Path) -> None:
    (tmp_path / "stockade.toml").write_text("[gateway]\nprot = 22\n")
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert "gateway.prot" in str(err.value)


def test_missing_config_file_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STOCKADE_CONFIG", "/nonexistent/stockade.toml")
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert "/nonexistent/stockade.toml" in str(err.value)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("15m", 900), ("1h30m", 5400), ("7d", 604800), ("45", 45), (30, 30)],
)
def test_parse_duration(text: str | int, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "soon", "5x", "1h 30m", "-5m", "0s", "m5"])
def test_bad_durations_name_the_field(text: str) -> None:
    with pytest.raises(InvalidInput) as err:
        parse_duration(text, field="--ttl")
    assert err.value.field == "--ttl"


def test_format_duration_round_trips() -> None:
    for seconds in (1, 59, 61, 3600, 5400, 90061):
        delta = timedelta(seconds=seconds)
        assert parse_duration(format_duration(delta)) == delta


@pytest.mark.parametrize(
    ("env", "value", "expected"),
    [
        ("MAX_STARTUPS", "10:30:60", (10, 30, 60)),
        ("MAX_STARTUPS", "[10, 30, 60]", (10, 30, 60)),
        ("MAX_STARTUPS", "20", (20, 100, 20)),
        ("PER_SOURCE_NET_BLOCK_SIZE", "24:48", (24, 48)),
        ("PER_SOURCE_NET_BLOCK_SIZE", "24", (24, 64)),
    ],
)
def test_preauth_openssh_forms_from_env(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, expected: tuple[int, ...]
) -> None:
    monkeypatch.setenv(f"STOCKADE_GATEWAY__PREAUTH__{env}", value)
    assert getattr(load_settings().gateway.preauth, env.lower()) == expected


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"max_startups": "60:30:10"}, "full (10) must not be below start (60)"),
        ({"max_startups": "10:0:60"}, "rate is a percentage from 1 to 100, got 0"),
        ({"max_startups": "10:101:60"}, "rate is a percentage from 1 to 100, got 101"),
        ({"max_startups": "0:30:60"}, "start must be at least 1"),
        ({"max_startups": "10:30"}, "start:rate:full"),
        ({"max_startups": "ten"}, "numbers separated by ':'"),
        ({"per_source_net_block_size": "33:64"}, "IPv4 prefix length must be 1 to 32"),
        ({"per_source_net_block_size": "32:129"}, "IPv6 prefix length must be 1 to 128"),
        ({"per_source_max_startups": 0}, "greater than or equal to 1"),
        ({"penalty_min": 600, "penalty_max": 600}, "penalty_min (600) must be below penalty_max"),
        ({"penalty_exempt": ["10.0.0.300/8"]}, "is not a CIDR"),
        ({"penalty_overflow": "drop"}, "'deny-all' or 'permissive'"),
    ],
)
def test_preauth_bad_values_say_how_to_fix(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=r"gateway\.preauth") as err:
        load_settings(gateway={"preauth": overrides})
    assert message in str(err.value)


def test_preauth_defaults_allow_32_parallel_logins_from_one_host() -> None:
    preauth = load_settings().gateway.preauth
    start, _, _ = preauth.max_startups
    assert start > 32
    assert preauth.per_source_max_startups is None or preauth.per_source_max_startups >= 32
    assert preauth.penalty_exempt == []

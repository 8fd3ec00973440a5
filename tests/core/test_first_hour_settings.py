"""Settings errors a newcomer meets first: each names the file, line or variable to fix."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest

from stockade.core import ConfigError, InvalidInput, load_settings, parse_duration
from stockade.core.durations import MAX_DURATION
from stockade.core.settings import instance_id, setting_origin


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in list(os.environ):
        if key.startswith(("STOCKADE_", "VAULT_")):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize(
    "value",
    ["999999999999999999999h", "99999999999d", "36501d", 10**400, float("inf"), float("nan")],
)
def test_huge_durations_are_invalid_input_not_overflow(value: object) -> None:
    with pytest.raises(InvalidInput) as err:
        parse_duration(value, field="--ttl")  # type: ignore[arg-type]
    assert err.value.field == "--ttl"


def test_longest_duration_is_accepted() -> None:
    assert parse_duration("36500d") == MAX_DURATION
    assert parse_duration("1h30m") == timedelta(minutes=90)


@pytest.mark.parametrize("value", ["1" * 100 + "s", "²", ["1h"]])
def test_odd_duration_inputs_are_refused(value: object) -> None:
    with pytest.raises(InvalidInput):
        parse_duration(value)  # type: ignore[arg-type]


def test_env_ban_schedule_overflow_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STOCKADE_SHIELD__BAN_SCHEDULE", '["99999999999d"]')
    with pytest.raises(ConfigError) as err:
        load_settings()
    text = str(err.value)
    assert "STOCKADE_SHIELD__BAN_SCHEDULE" in text
    assert "configuration file" not in text
    assert "shield.ban_schedule" in text


def test_env_value_that_is_not_json_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STOCKADE_SHIELD__BAN_SCHEDULE", "[10m")
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert str(err.value).startswith("STOCKADE_SHIELD__BAN_SCHEDULE")


def test_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "stockade.toml").write_text("[shield]\nthreshold = 3\nwindow = \n")
    with pytest.raises(ConfigError) as err:
        load_settings()
    text = str(err.value)
    assert "stockade.toml" in text
    assert "line 3" in text


def test_toml_not_utf8_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "stockade.toml").write_bytes(b"[shield]\nreason = '\xff\xfe'\n")
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert "stockade.toml" in str(err.value)
    assert "UTF-8" in str(err.value)


def test_bad_value_in_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "custom.toml"
    path.write_text("[shield]\nthreshold = -1\n")
    os.environ["STOCKADE_CONFIG"] = str(path)
    try:
        with pytest.raises(ConfigError) as err:
            load_settings()
    finally:
        del os.environ["STOCKADE_CONFIG"]
    assert str(path) in str(err.value)
    assert "shield.threshold" in str(err.value)


def test_misspelled_section_is_rejected_with_suggestion(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STOCKADE_SHEILD__THRESHOLD", "3")
    with pytest.raises(ConfigError) as err:
        load_settings()
    text = str(err.value)
    assert "STOCKADE_SHEILD__THRESHOLD" in text
    assert "STOCKADE_SHIELD__THRESHOLD" in text


def test_misspelled_field_is_still_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STOCKADE_SHIELD__THRESHHOLD", "3")
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert "STOCKADE_SHIELD__THRESHHOLD" in str(err.value)


def test_origin_of_each_source(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "stockade.toml").write_text("[gateway]\nport = 2400\n[shield]\nthreshold = 4\n")
    monkeypatch.setenv("STOCKADE_GATEWAY__PORT", "2500")
    monkeypatch.setenv("VAULT_ADDR", "http://127.0.0.1:8200")
    assert setting_origin(("gateway", "port")) == ("env", "STOCKADE_GATEWAY__PORT")
    assert setting_origin(("shield", "threshold")) == ("file", "stockade.toml")
    assert setting_origin(("vault", "addr")) == ("env", "VAULT_ADDR")
    assert setting_origin(("api", "port")) == ("default", "")


def test_nft_table_is_per_data_dir(tmp_path: Path) -> None:
    one = load_settings(data_dir=tmp_path / "a")
    two = load_settings(data_dir=tmp_path / "b")
    assert one.nft_table != two.nft_table
    assert one.nft_table == f"stockade_{instance_id(tmp_path / 'a')[:8]}"
    assert load_settings(data_dir=tmp_path / "a").nft_table == one.nft_table
    named = load_settings(data_dir=tmp_path / "a", shield={"nft_table": "edge"})
    assert named.nft_table == "edge"


def test_broker_clusters_from_toml(tmp_path: Path) -> None:
    (tmp_path / "stockade.toml").write_text(
        '[[broker.clusters]]\nname = "prod"\nserver = "https://10.0.0.1:6443"\n'
        'ca_file = "/etc/prod-ca.pem"\n'
        '[[broker.clusters]]\nname = "dev"\nserver = "https://dev.example:443"\n'
    )
    clusters = load_settings().broker.clusters
    assert [c.name for c in clusters] == ["prod", "dev"]
    assert clusters[0].ca_file == Path("/etc/prod-ca.pem")
    assert clusters[1].ca_file is None


@pytest.mark.parametrize(
    ("server", "name"),
    [
        ("http://10.0.0.1:6443", "prod"),
        ("https://user:pw@10.0.0.1", "prod"),
        ("https://10.0.0.1", "bad name"),
    ],
)
def test_bad_clusters_are_refused(tmp_path: Path, server: str, name: str) -> None:
    (tmp_path / "stockade.toml").write_text(
        f'[[broker.clusters]]\nname = "{name}"\nserver = "{server}"\n'
    )
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert "broker.clusters" in str(err.value)


def test_duplicate_cluster_names_are_refused(tmp_path: Path) -> None:
    entry = '[[broker.clusters]]\nname = "a"\nserver = "https://h"\n'
    (tmp_path / "stockade.toml").write_text(entry * 2)
    with pytest.raises(ConfigError, match="listed twice"):
        load_settings()

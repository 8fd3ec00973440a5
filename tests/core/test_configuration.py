"""Effective settings with their sources, and the generated reference in docs/configuration.md."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from stockade.core import load_settings
from stockade.core.configuration import SECURE, effective_settings, settings_reference

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in list(os.environ):
        if key.startswith(("STOCKADE_", "VAULT_")):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


def test_committed_reference_matches_the_settings_tree() -> None:
    assert DOCS.read_text() == settings_reference(), (
        "docs/configuration.md drifted from the settings tree; regenerate it with"
        " `stockade config reference -o docs/configuration.md`"
    )


def test_reference_lists_every_setting_with_env_default_and_meaning() -> None:
    text = settings_reference()
    for row in effective_settings(load_settings()):
        assert f"| `{row.key}` |" in text, row.key
        assert row.env in text
    assert "| `shield.threshold` | `STOCKADE_SHIELD__THRESHOLD` | float | `5.0` |" in text
    assert "`broker.clusters[].server`" in text
    assert "`VAULT_ADDR`" in text
    assert "``" not in text


def test_sources_and_redaction(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "stockade.toml").write_text("[shield]\nthreshold = 4\n")
    monkeypatch.setenv("STOCKADE_GATEWAY__PORT", "2500")
    monkeypatch.setenv("VAULT_TOKEN", "hvs.very-secret")
    monkeypatch.setenv("STOCKADE_STORE__URL", "postgresql://app:hunter2@127.0.0.1:5432/db")
    rows = {row.key: row for row in effective_settings(load_settings())}
    assert (rows["gateway.port"].value, rows["gateway.port"].source) == (2500, "env")
    assert rows["gateway.port"].origin == "STOCKADE_GATEWAY__PORT"
    assert (rows["shield.threshold"].value, rows["shield.threshold"].source) == (4.0, "file")
    assert rows["api.port"].source == "default"
    assert rows["vault.token"].value == SECURE
    assert rows["vault.token"].origin == "VAULT_TOKEN"
    assert rows["store.url"].value == f"postgresql://app:{SECURE}@127.0.0.1:5432/db"
    assert rows["shield.ban_schedule"].value == ["10m", "1h", "1d", "7d"]
    dumped = repr([row.to_dict() for row in rows.values()])
    assert "very-secret" not in dumped
    assert "hunter2" not in dumped

"""Workspace settings whose defaults are security decisions, and what the reference says."""

from __future__ import annotations

from pathlib import Path

from stockade.core.settings import Settings

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_sandbox_network_is_on_by_default_and_the_reference_says_so() -> None:
    assert Settings().workspace.sandbox_network is True
    row = next(
        line for line in REFERENCE.read_text().splitlines() if "`workspace.sandbox_network`" in line
    )
    assert "| `true` |" in row
    assert "On by default" in row

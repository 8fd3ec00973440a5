"""Shared CLI helpers: unique-prefix resolution and tables that wrap instead of truncating."""

from __future__ import annotations

import pytest

from stockade.cli import _common
from stockade.cli._common import print_table, resolve_prefix
from stockade.core import InvalidInput, NotFound

IDS = [
    "SHA256:Zq3k9vYbAqJ0yF2m4d8b1x7cT5eW6rU0iO9pL2kJ3hG",
    "SHA256:Zq3k9vYbBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB",
    "SHA256:aaaa1111222233334444555566667777888899990000",
]


def test_exact_and_unique_prefix() -> None:
    assert resolve_prefix(IDS[2], IDS, kind="fingerprint") == IDS[2]
    assert resolve_prefix("SHA256:a", IDS, kind="fingerprint") == IDS[2]
    assert resolve_prefix("SHA256:Zq3k9vYbA", IDS, kind="fingerprint") == IDS[0]


def test_ambiguous_prefix_lists_candidates_whole() -> None:
    with pytest.raises(InvalidInput) as err:
        resolve_prefix("SHA256:Zq3k", IDS, kind="fingerprint")
    assert err.value.exit_code == 2
    assert IDS[0] in str(err.value)
    assert IDS[1] in str(err.value)
    assert "matches 2" in str(err.value)


def test_no_match_and_empty() -> None:
    with pytest.raises(NotFound) as err:
        resolve_prefix("SHA256:x", IDS, kind="session")
    assert err.value.exit_code == 2
    with pytest.raises(InvalidInput):
        resolve_prefix("", IDS, kind="session")


def test_exact_id_wins_over_longer_ids_it_prefixes() -> None:
    assert resolve_prefix("abc", ["abc", "abcd"], kind="session") == "abc"


def test_piped_table_keeps_long_values_whole(capsys: pytest.CaptureFixture[str]) -> None:
    long_id = "s-" + "0123456789abcdef" * 8
    print_table("sessions", ["id", "user"], [[long_id, "alice"], ["[secure]", None]])
    out = capsys.readouterr().out
    assert long_id in out  # one line, never cut with an ellipsis
    assert "…" not in out
    assert "[secure]" in out


def test_terminal_table_folds_instead_of_truncating(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from rich.console import Console

    monkeypatch.setattr(_common, "console", Console(force_terminal=True, width=40))
    long_id = "s-" + "0123456789abcdef" * 4
    print_table("sessions", ["id", "user"], [[long_id, "alice"]])
    out = capsys.readouterr().out
    assert "…" not in out
    joined = "".join(
        line.split("│")[1].strip() for line in out.splitlines() if line.count("│") >= 2
    )
    assert long_id in joined.replace(" ", "")

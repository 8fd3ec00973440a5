"""Redaction, peer escaping, and loggers created before configuration."""

from __future__ import annotations

import json

import pytest

from stockade.core import configure_logging, escape_peer, get_logger, redact

EARLY = get_logger("stockade.test.early", component="test")


def test_logger_created_at_import_follows_later_configuration(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("warning", json_output=True)
    EARLY.info("hidden")
    EARLY.warning("shown", vault_token="s.abcdef", nested={"password": "pw", "user": "alice"})
    out = capsys.readouterr()
    assert out.out == ""
    lines = [json.loads(line) for line in out.err.splitlines() if line.startswith("{")]
    assert [line["event"] for line in lines] == ["shown"]
    record = lines[0]
    assert record["vault_token"] == "[secure]"
    assert record["nested"] == {"password": "[secure]", "user": "alice"}
    assert record["component"] == "test"
    assert "s.abcdef" not in out.err
    assert '"pw"' not in out.err


def test_redact_nested_and_suffix_names() -> None:
    data = {"db_password": "x", "items": [{"secret": "y"}, {"name": "z"}], "tokens": 3}
    assert redact(data) == {
        "db_password": "[secure]",
        "items": [{"secret": "[secure]"}, {"name": "z"}],
        "tokens": 3,
    }


def test_escape_peer_neutralises_control_characters() -> None:
    assert escape_peer("alice\nroot\x1b[31m") == "alice\\nroot\\x1b[31m"
    assert escape_peer(b"\xff\x00abc") == "\\xff\\x00abc"
    assert escape_peer("a" * 300).endswith("...")

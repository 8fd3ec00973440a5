"""One grammar for user and workspace names: what can be created can log in, and nothing else."""

from __future__ import annotations

import pytest

from stockade.core.errors import InvalidInput
from stockade.identity import MAX_TARGET_LEN, Target, check_username, parse_target


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("alice", Target("alice")),
        ("alice+ws2", Target("alice", "ws2")),
        ("_svc", Target("_svc")),
        ("a.b_c-d+x.y", Target("a.b_c-d", "x.y")),
        ("bob+1ws", Target("bob", "1ws")),
    ],
)
def test_parses(raw: str, expected: Target) -> None:
    assert parse_target(raw) == expected
    assert str(expected) == raw


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "+ws",
        "alice+",
        "alice+ws+x",
        "al ice",
        "alice\x1b[2J",
        "alice\n",
        "-alice",
        "1alice",
        "Alice",
        "alice+ws\x00",
        "a" * 33,
        "alice+" + "w" * 65,
        "é",
        "x" * (MAX_TARGET_LEN + 1),
    ],
)
def test_rejects(raw: str) -> None:
    with pytest.raises(InvalidInput):
        parse_target(raw)


@pytest.mark.parametrize("name", ["_svc", "alice", "a" * 32, "x.y-z_"])
def test_every_creatable_name_parses_as_a_target(name: str) -> None:
    assert check_username(name) == name
    assert parse_target(name) == Target(name)

from __future__ import annotations

import pytest

from stockade.core.errors import InvalidInput
from stockade.gateway._target import MAX_NAME_LEN, Target, parse_target


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("alice", Target("alice")),
        ("alice+ws2", Target("alice", "ws2")),
        ("Alice+WS-2", Target("alice", "ws-2")),
        ("a.b_c-d+x.y", Target("a.b_c-d", "x.y")),
    ],
)
def test_parses(raw: str, expected: Target) -> None:
    assert parse_target(raw) == expected
    assert str(expected) == raw.lower()


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
        "alice+ws\x00",
        "a" * (MAX_NAME_LEN + 1),
        "alice+" + "w" * (MAX_NAME_LEN + 1),
        "é",
    ],
)
def test_rejects(raw: str) -> None:
    with pytest.raises(InvalidInput):
        parse_target(raw)

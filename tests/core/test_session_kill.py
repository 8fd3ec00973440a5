"""A :class:`SessionKill` names one session, one user's sessions or one workspace's: never a user
*and* a workspace (the gateway ended the workspace's sessions, every user's, while the broker
refused every session of the user, in any workspace)."""

from __future__ import annotations

import pytest

from stockade.core.errors import InvalidInput
from stockade.core.events import SessionKill


def test_a_wildcard_kill_naming_both_a_user_and_a_workspace_is_malformed() -> None:
    data = b'{"session_id": "*", "username": "alice", "workspace_label": "w1"}'
    with pytest.raises(InvalidInput, match="workspace_label"):
        SessionKill.from_bytes(data)


@pytest.mark.parametrize("label", ["", "w1"])
def test_a_workspace_label_needs_the_wildcard_and_a_value(label: str) -> None:
    sid = "*" if label == "" else "s1"
    with pytest.raises(InvalidInput, match="workspace_label"):
        SessionKill.from_bytes(f'{{"session_id": "{sid}", "workspace_label": "{label}"}}'.encode())


def test_the_kills_that_are_sent_still_parse() -> None:
    for kill in (
        SessionKill(session_id="*", workspace_label="w1"),
        SessionKill(session_id="*", username="alice"),
        SessionKill(session_id="s1", username="alice"),
    ):
        assert SessionKill.from_bytes(kill.to_bytes()) == kill

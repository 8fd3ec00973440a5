"""ATTACK: the reversible owner label ``stockade.dev/user-name`` names the user Worktrace bans.
A value that does not decode (bad base32, not UTF-8) names nobody: it never falls back to the
hashed ``stockade.dev/user`` stand-in, which a real user may be literally called."""

from __future__ import annotations

import base64

import pytest

from stockade.workspace import DEFAULT_BLUEPRINT, render_workspace
from stockade.worktrace import AnomalyConfig, Engine, load_rules
from worktrace.conftest import exec_event, line


def _owner(labels: dict[str, str]) -> str | None:
    raw = exec_event("/usr/bin/nsenter", "-t 1 -a sh", labels=labels)
    (alert,) = Engine(load_rules(), anomaly=AnomalyConfig(enabled=False)).feed(line(raw))
    return alert.session.username


def test_the_rendered_label_decodes_to_the_exact_owner() -> None:
    pod = render_workspace(DEFAULT_BLUEPRINT, workspace="w1", owner="_svc", uid=200001)
    assert _owner(pod.pod["metadata"]["labels"]) == "_svc"


@pytest.mark.parametrize(
    "value",
    [
        "B32!!!!",  # not base32
        "B32" + base64.b32encode(b"\xff\xfe").decode().rstrip("="),  # not UTF-8
        "B32mfrgg",  # lower case: not the alphabet
        "B32A",  # a length base32 never has
    ],
)
def test_an_undecodable_owner_label_names_nobody(value: str) -> None:
    pod = render_workspace(DEFAULT_BLUEPRINT, workspace="w1", owner="_svc", uid=200001)
    labels = dict(pod.pod["metadata"]["labels"]) | {"stockade.dev/user-name": value}
    assert labels["stockade.dev/user"] != "_svc"  # the hashed stand-in
    assert _owner(labels) is None

"""The input document: one builder, one shape, validated on the way in."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from stockade.authz import Context, Resource, Subject, build_input, parse_input
from stockade.core.errors import InvalidInput

MOMENT = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def full_input() -> dict[str, Any]:
    return build_input(
        "ssh.exec",
        Resource(kind="workspace", name="ws1", owner="alice", labels={"team": "red"}),
        Context(
            user=Subject(name="alice", roles=["dev"], groups=("red",), auth_methods=("publickey",)),
            source_ip="203.0.113.7",
            auth_method="publickey",
            mfa=True,
            time=MOMENT,
            session_id="s-1",
            extra={"command": "make test"},
        ),
    )


def test_shape_follows_the_contract() -> None:
    assert full_input() == {
        "action": "ssh.exec",
        "resource": {
            "kind": "workspace",
            "name": "ws1",
            "owner": "alice",
            "labels": {"team": "red"},
        },
        "context": {
            "user": {
                "name": "alice",
                "roles": ["dev"],
                "groups": ["red"],
                "auth_methods": ["publickey"],
            },
            "source_ip": "203.0.113.7",
            "auth_method": "publickey",
            "mfa": True,
            "time": "2024-05-01T12:00:00Z",
            "session_id": "s-1",
            "command": "make test",
        },
    }


def test_absent_values_are_null_and_time_defaults_to_now() -> None:
    before = datetime.now(UTC) - timedelta(seconds=1)
    doc = build_input(
        "credential.get", Resource(kind="credential", name="git"), Context(user=Subject("bob"))
    )
    context = doc["context"]
    assert doc["resource"] == {"kind": "credential", "name": "git", "owner": None, "labels": {}}
    assert context["source_ip"] is None
    assert context["auth_method"] is None
    assert context["session_id"] is None
    assert context["mfa"] is False
    assert context["time"].endswith("Z")
    assert datetime.fromisoformat(context["time"]) >= before


def test_time_is_rendered_in_utc() -> None:
    local = MOMENT.astimezone(timezone(timedelta(hours=2)))
    doc = build_input("ssh.connect", Resource("workspace", "w"), Context(Subject("a"), time=local))
    assert doc["context"]["time"] == "2024-05-01T12:00:00Z"


def test_documents_are_independent_copies() -> None:
    labels = {"team": "red"}
    resource = Resource(kind="workspace", name="w", labels=labels)
    doc = build_input("ssh.connect", resource, Context(Subject("a")))
    doc["resource"]["labels"]["team"] = "blue"
    assert resource.labels == {"team": "red"}


@pytest.mark.parametrize(
    "action", ["", "SSH.connect", "ssh connect", "ssh..connect", ".ssh", "a" * 65, 7, None]
)
def test_bad_actions_are_rejected(action: Any) -> None:
    with pytest.raises(InvalidInput, match="action"):
        build_input(action, Resource("workspace", "w"), Context(Subject("a")))


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: Resource(kind="", name="w"), "resource.kind"),
        (lambda: Resource(kind="w", name="w", owner=3), "resource.owner"),  # type: ignore[arg-type]
        (lambda: Resource(kind="w", name="w", labels={"a": 1}), "resource.labels"),  # type: ignore[dict-item]
        (lambda: Subject(name=""), "context.user.name"),
        (lambda: Subject(name="a", roles="admin"), "context.user.roles"),
        (lambda: Subject(name="a", groups=[1]), "context.user.groups"),  # type: ignore[list-item]
        (lambda: Context(user=Subject("a"), time=datetime(2024, 1, 1)), "context.time"),
        (lambda: Context(user=Subject("a"), mfa="yes"), "context.mfa"),  # type: ignore[arg-type]
        (lambda: Context(user=Subject("a"), source_ip=1), "context.source_ip"),  # type: ignore[arg-type]
        (lambda: Context(user=Subject("a"), extra={"user": "x"}), "context.extra"),
        (lambda: Context(user=Subject("a"), extra={"when": MOMENT}), "context.extra.when"),
        (lambda: Context(user="alice"), "context.user"),  # type: ignore[arg-type]
    ],
)
def test_bad_fields_are_named(make: Any, field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        make()
    assert caught.value.field == field


def test_parse_input_round_trips() -> None:
    doc = full_input()
    assert parse_input(json.dumps(doc)) == doc
    assert parse_input(json.dumps(doc).encode()) == doc
    assert parse_input(doc) == doc


def test_parse_input_fills_defaults() -> None:
    doc = parse_input(
        '{"action": "user.auth", "resource": {"kind": "user", "name": "a"},'
        ' "context": {"user": {"name": "a"}, "time": "2024-05-01T12:00:00Z"}}'
    )
    assert doc["context"]["user"] == {"name": "a", "roles": [], "groups": [], "auth_methods": []}
    assert doc["resource"]["owner"] is None


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("{not json", "input"),
        ("[1, 2]", "input"),
        ('{"action": "ssh.connect", "context": {"user": {"name": "a"}}}', "resource.kind"),
        ('{"action": "ssh.connect", "resource": {"kind": "w"}}', "context.user.name"),
        ('{"action": "ssh.connect", "resource": "ws1"}', "resource"),
        ('{"resource": {"kind": "w"}, "context": {"user": {"name": "a"}}}', "action"),
        (
            '{"action": "a.b", "resource": {"kind": "w"}, '
            '"context": {"user": {"name": "a"}, "time": "yesterday"}}',
            "context.time",
        ),
        (
            '{"action": "a.b", "resource": {"kind": "w"}, "context": {"user": {"name": "a", '
            '"roles": [1]}}}',
            "context.user.roles",
        ),
    ],
)
def test_parse_input_names_the_problem(text: str, field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_input(text)
    assert caught.value.field == field

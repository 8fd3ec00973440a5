"""Object names are DNS-1123 labels that never collide; label values are always valid."""

from __future__ import annotations

import re

import pytest

from stockade.workspace import label_value, object_name

DNS1123 = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


@pytest.mark.parametrize(
    "name", ["alice", "Alice_Dev.1", "a" * 64, "__", "x.y", "-lead-", "UPPER", "ünïcode"]
)
def test_object_names_are_dns_labels(name: str) -> None:
    assert DNS1123.match(object_name(name))
    assert DNS1123.match(object_name(name, "home"))
    assert len(object_name(name)) <= 63


def test_spellings_that_fold_together_still_differ() -> None:
    names = {object_name(n) for n in ("alice.dev", "alice_dev", "Alice-Dev", "alice-dev")}
    assert len(names) == 4


def test_label_values() -> None:
    assert label_value("alice") == "alice"
    assert label_value("a.b_c-d") == "a.b_c-d"
    odd = label_value("_bad start" + "x" * 80)
    assert re.match(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$", odd)


@pytest.mark.parametrize("exact", ["_team", "team a", "_svc", "a" * 64, "ünïcode"])
def test_a_valid_name_never_takes_a_hashed_label_of_another(exact: str) -> None:
    """A workspace literally named as another's hashed label (``team-<hash>``) gets a label of
    its own: else a Worktrace kill by ``workspace_label`` from its Pod ends the other's sessions."""
    stand_in = label_value(exact)
    assert stand_in != exact  # hashed: not a label value itself
    assert label_value(stand_in) != stand_in
    assert label_value(stand_in) != label_value(exact)
    assert label_value(label_value(stand_in)) != label_value(stand_in)


def test_label_values_that_look_hashed_only_when_they_end_in_a_hash() -> None:
    assert label_value("build-2024") == "build-2024"
    assert label_value("cafe-babe1234x") == "cafe-babe1234x"

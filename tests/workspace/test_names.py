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

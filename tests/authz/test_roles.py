"""Roles are declared by the bundle (data.stockade.roles), so a custom bundle brings its own."""

from __future__ import annotations

from pathlib import Path

import pytest

from stockade.authz import Authorizer
from stockade.core import PolicyError
from stockade.core.settings import AuthzSettings

DECISION = 'decision := {"allow": false, "obligations": {}, "reasons": ["no"]}\n'


def _bundle(root: Path, extra: str) -> Path:
    root.mkdir()
    (root / "p.rego").write_text(f"package stockade\n\nimport rego.v1\n\n{DECISION}{extra}")
    return root


def test_shipped_bundle_declares_the_default_roles() -> None:
    roles = Authorizer(settings=AuthzSettings()).roles()
    assert roles == {"admin", "developer", "contractor", "sudoer", "tunneler", "auditor"}
    assert "contracter" not in roles


def test_custom_bundle_brings_its_own_roles(tmp_path: Path) -> None:
    root = _bundle(tmp_path / "b", 'roles := {"ops", "dev"}\n')
    assert Authorizer(settings=AuthzSettings(), bundle_dir=root).roles() == {"ops", "dev"}


def test_bundle_without_roles_is_a_policy_error(tmp_path: Path) -> None:
    root = _bundle(tmp_path / "b", "")
    with pytest.raises(PolicyError, match=r"data\.stockade\.roles"):
        Authorizer(settings=AuthzSettings(), bundle_dir=root).roles()


@pytest.mark.parametrize("value", ['"admin"', '{"a", 1}', "set()"])
def test_malformed_roles_are_refused(tmp_path: Path, value: str) -> None:
    root = _bundle(tmp_path / "b", f"roles := {value}\n")
    authorizer = Authorizer(settings=AuthzSettings(), bundle_dir=root)
    if value == "set()":
        assert authorizer.roles() == frozenset()
        return
    with pytest.raises(PolicyError):
        authorizer.roles()

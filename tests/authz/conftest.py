"""Helpers for authz tests: small bundles written to tmp_path, and request builders."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from stockade.authz import Context, Resource, Subject, build_input
from stockade.core.settings import AuthzSettings

HEADER = "package stockade\n\nimport rego.v1\n\n"


def write_bundle(root: Path, files: Mapping[str, str]) -> Path:
    """Write ``files`` (relative name -> text) under ``root`` and return ``root``."""
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def ssh_request(
    action: str = "ssh.connect",
    *,
    user: str = "alice",
    roles: tuple[str, ...] = (),
    owner: str | None = "alice",
    kind: str = "workspace",
    **context: Any,
) -> dict[str, Any]:
    """An input document for ``user`` acting on workspace ``ws1`` owned by ``owner``."""
    return build_input(
        action,
        Resource(kind=kind, name="ws1", owner=owner),
        Context(user=Subject(name=user, roles=roles), **context),
    )


@pytest.fixture
def settings() -> AuthzSettings:
    return AuthzSettings()

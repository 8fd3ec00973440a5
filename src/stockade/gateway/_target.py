"""The SSH username as a target: ``alice`` (default workspace) or ``alice+ws2`` (workspace ``ws2``).

Peer input: normalized and length-checked here, where it is parsed, before anything else sees it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from stockade.core.errors import InvalidInput

__all__ = ["MAX_NAME_LEN", "Target", "parse_target"]

#: Longest user or workspace name accepted from a peer.
MAX_NAME_LEN = 64

_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*\Z")


@dataclass(frozen=True, slots=True)
class Target:
    """Who logs in (``user``) and where to (``workspace``; ``None`` means the user's default)."""

    user: str
    workspace: str | None = None

    def __str__(self) -> str:
        return self.user if self.workspace is None else f"{self.user}+{self.workspace}"


def _check(field: str, value: str) -> str:
    if not value:
        raise InvalidInput(field, "is empty")
    if len(value) > MAX_NAME_LEN:
        raise InvalidInput(field, f"longer than {MAX_NAME_LEN} characters")
    if not _NAME.match(value):
        raise InvalidInput(
            field, "only lowercase letters, digits, '.', '_' and '-' (a letter or digit first)"
        )
    return value


def parse_target(username: str) -> Target:
    """Split an SSH username into a :class:`Target`.

    ``alice`` -> ``Target("alice")``; ``alice+ws2`` -> ``Target("alice", "ws2")``. Names are
    lowercased ASCII ``[a-z0-9._-]`` of at most :data:`MAX_NAME_LEN` characters; anything else
    (control characters, empty parts, a second ``+``) raises :class:`InvalidInput`.
    """
    if len(username) > 2 * MAX_NAME_LEN + 1:
        raise InvalidInput("username", f"longer than {2 * MAX_NAME_LEN + 1} characters")
    user, plus, workspace = username.partition("+")
    user = _check("username", user.lower())
    if not plus:
        return Target(user)
    return Target(user, _check("workspace", workspace.lower()))

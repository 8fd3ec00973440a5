"""The SSH username as a target, in identity's one grammar for user and workspace names.

``alice`` means alice's default workspace; ``alice+ws2`` means workspace ``ws2``. The gateway,
the CLI and identity itself all parse and check names here, so a name that can be created can
log in and a name that cannot be created is refused the same way everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

from stockade.core.errors import InvalidInput

from ._validation import check_username, check_workspace

__all__ = ["MAX_TARGET_LEN", "Target", "parse_target"]

#: Longest SSH username accepted (a 32-character user, ``+``, a 64-character workspace).
MAX_TARGET_LEN = 32 + 1 + 64


@dataclass(frozen=True, slots=True)
class Target:
    """Who logs in (``user``) and where to (``workspace``; ``None`` means the user's default)."""

    user: str
    workspace: str | None = None

    def __str__(self) -> str:
        return self.user if self.workspace is None else f"{self.user}+{self.workspace}"


def parse_target(username: str) -> Target:
    """Split an SSH username into a :class:`Target`; :class:`InvalidInput` for anything that is
    not ``USER`` or ``USER+WORKSPACE`` in identity's grammar (no case folding: ``Alice`` is not
    ``alice``)."""
    if not isinstance(username, str) or len(username) > MAX_TARGET_LEN:
        raise InvalidInput("username", f"longer than {MAX_TARGET_LEN} characters")
    user, plus, workspace = username.partition("+")
    check_username(user)
    if not plus:
        return Target(user)
    return Target(user, check_workspace(workspace))

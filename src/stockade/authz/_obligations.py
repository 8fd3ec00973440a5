"""Obligations: the closed, typed set of duties a decision may attach, parsed once.

A policy answers ``{"allow": true, "obligations": {...}}``; :func:`parse_obligations` turns the
raw object into a frozen :class:`Obligations` where the decision is read. Anything outside the set
below, or of the wrong type, makes the whole decision a deny with a reason (fail closed): a policy
that asks for a duty nobody enforces must not silently allow.

=====================  ======  ===============================================================
obligation             type    meaning
=====================  ======  ===============================================================
record_session         bool    record the session (asciinema cast v2); file transfers only as
                               audited transfers
record_input           bool    record input events (``"i"``) of interactive sessions too
sudo                   bool    the session may act as root inside its workspace
privileged             bool    run the workspace privileged (no backend offers it: refused)
agent_forwarding       bool    ``ssh -A`` is allowed (an explicit ``true`` is needed)
max_session_seconds    int     hard limit on the session's length (> 0)
require_mfa            bool    a second factor (TOTP) before the login completes
kill_session           bool    Worktrace response: end the session the alert names
ban_user               bool    Worktrace response: disable the user and ban the source
ban_seconds            int     Worktrace response: how long ``ban_user`` lasts (> 0)
patch:<json-pointer>   any     a JSON patch ``replace``/``add`` at that pointer when a workspace
                               Pod is provisioned (``workspace.provision``)
=====================  ======  ===============================================================
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["BOOLEAN_OBLIGATIONS", "ObligationError", "Obligations", "parse_obligations"]

#: The boolean obligations, in the order they are documented.
BOOLEAN_OBLIGATIONS = (
    "record_session",
    "record_input",
    "sudo",
    "privileged",
    "agent_forwarding",
    "require_mfa",
    "kill_session",
    "ban_user",
)
_PATCH_PREFIX = "patch:"
#: RFC 6901: "" or a sequence of "/token" with "~0"/"~1" escapes.
_POINTER = re.compile(r"(/([^~/]|~[01])*)*\Z")


class ObligationError(ValueError):
    """An obligation outside the closed set, or of the wrong type (the message says which)."""


@dataclass(frozen=True, slots=True)
class Obligations:
    """What a decision obliges its enforcer to do; every field has a safe default."""

    record_session: bool = False
    record_input: bool = False
    sudo: bool = False
    privileged: bool = False
    agent_forwarding: bool = False
    require_mfa: bool = False
    kill_session: bool = False
    ban_user: bool = False
    max_session_seconds: int | None = None
    ban_seconds: int | None = None
    patches: tuple[tuple[str, Any], ...] = ()
    """``(json_pointer, value)`` pairs from ``patch:<pointer>`` obligations, sorted by pointer."""

    def to_dict(self) -> dict[str, Any]:
        """The obligations as the policy would state them (only what differs from defaults)."""
        out: dict[str, Any] = {}
        for item in fields(self):
            if item.name == "patches":
                continue
            value = getattr(self, item.name)
            if value != item.default:
                out[item.name] = value
        for pointer, value in self.patches:
            out[_PATCH_PREFIX + pointer] = value
        return out

    def get(self, name: str, default: Any = None) -> Any:
        """Read one obligation by its policy name (for logs and generic callers)."""
        return self.to_dict().get(name, default)


NONE = Obligations()


def parse_obligations(raw: Mapping[str, Any]) -> Obligations:
    """The typed obligations of a raw ``obligations`` object; :class:`ObligationError` names the
    first unknown or ill-typed one. ``false`` booleans are accepted as explicit defaults."""
    if not raw:
        return NONE
    values: dict[str, Any] = {}
    patches: list[tuple[str, Any]] = []
    for key, value in raw.items():
        if type(key) is not str:
            raise ObligationError("obligation names must be strings")
        if key in BOOLEAN_OBLIGATIONS:
            if type(value) is not bool:
                raise ObligationError(f"obligation {key} must be a boolean, not {_kind(value)}")
            values[key] = value
        elif key in ("max_session_seconds", "ban_seconds"):
            if type(value) is not int or value <= 0:
                raise ObligationError(f"obligation {key} must be a positive integer, not {value!r}")
            values[key] = value
        elif key.startswith(_PATCH_PREFIX):
            pointer = key[len(_PATCH_PREFIX) :]
            if not pointer or not _POINTER.match(pointer):
                raise ObligationError(f"obligation {key!r} needs a JSON pointer after 'patch:'")
            patches.append((pointer, value))
        else:
            raise ObligationError(f"unknown obligation {key!r}")
    return Obligations(**values, patches=tuple(sorted(patches, key=lambda p: p[0])))


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__

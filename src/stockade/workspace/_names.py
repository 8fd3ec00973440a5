"""Kubernetes names and label values derived from Stockade names.

Workspace names allow characters (``_``, ``.``, upper case, 64 characters) that Service names and
label values do not, so every object name is a DNS-1123 label made of a readable prefix and a
short hash of the exact name: two workspaces never share a name, however they are spelled.
"""

from __future__ import annotations

import base64
import hashlib
import re

__all__ = [
    "LABEL_SESSION",
    "LABEL_USER",
    "LABEL_USER_NAME",
    "LABEL_WORKSPACE",
    "label_value",
    "object_name",
    "reversible_label",
]

LABEL_WORKSPACE = "stockade.dev/workspace"
LABEL_USER = "stockade.dev/user"
LABEL_SESSION = "stockade.dev/session"
LABEL_USER_NAME = "stockade.dev/user-name"
"""The owner's exact name, for a name that is no label value (``_svc``): see
:func:`reversible_label`. Tetragon exports labels, not annotations, so Worktrace reads the
user it bans from here."""

_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?)?$")
_HASH_LEN = 8
#: What every hashed stand-in ends in: a name that does is hashed too, so a workspace literally
#: named ``team-<hash>`` never shares the label of ``_team`` (nor is killed by its alerts).
_HASHED_TAIL = re.compile(r"-[0-9a-f]{8}$")


def _digest(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:_HASH_LEN]


def object_name(name: str, suffix: str = "", *, limit: int = 63) -> str:
    """A DNS-1123 label for ``name`` (plus ``suffix``, e.g. ``"home"``): lower-case letters,
    digits and ``-``, at most ``limit`` characters, ending in an 8-hex-digit hash of ``name``."""
    tail = f"-{_digest(name)}" + (f"-{suffix}" if suffix else "")
    stem = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    stem = stem[: max(0, limit - len(tail))].rstrip("-") or "ws"
    return f"{stem}{tail}"[:limit]


def label_value(value: str) -> str:
    """``value`` as a label value: itself when valid and not ending like a hashed stand-in
    (``-`` and 8 hex digits), else a valid prefix and its hash."""
    if _LABEL_VALUE.match(value) and not _HASHED_TAIL.search(value):
        return value
    return object_name(value)


def reversible_label(value: str) -> str | None:
    """``value`` when it is a valid label value, else ``B32`` and its unpadded base32 (upper
    case, so never a Stockade name, which is lower case): decodable, unlike
    :func:`label_value`. ``None`` when that is longer than a label value may be."""
    if _LABEL_VALUE.match(value):
        return value
    encoded = "B32" + base64.b32encode(value.encode()).decode().rstrip("=")
    return encoded if len(encoded) <= 63 else None

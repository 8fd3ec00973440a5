"""Kubernetes names and label values derived from Stockade names.

Workspace names allow characters (``_``, ``.``, upper case, 64 characters) that Service names and
label values do not, so every object name is a DNS-1123 label made of a readable prefix and a
short hash of the exact name: two workspaces never share a name, however they are spelled.
"""

from __future__ import annotations

import hashlib
import re

__all__ = [
    "LABEL_SESSION",
    "LABEL_USER",
    "LABEL_WORKSPACE",
    "label_value",
    "object_name",
]

LABEL_WORKSPACE = "stockade.dev/workspace"
LABEL_USER = "stockade.dev/user"
LABEL_SESSION = "stockade.dev/session"

_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?)?$")
_HASH_LEN = 8


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
    """``value`` as a label value: itself when valid, else a valid prefix and its hash."""
    if _LABEL_VALUE.match(value):
        return value
    return object_name(value)

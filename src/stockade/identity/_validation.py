"""Checks on names and fields identity accepts; each failure is an InvalidInput naming the field."""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable
from typing import Any

from stockade.core.errors import InvalidInput

__all__ = [
    "check_backend",
    "check_config",
    "check_email",
    "check_endpoint",
    "check_labels",
    "check_session_id",
    "check_text",
    "check_username",
    "check_workspace",
]

USERNAME = re.compile(r"[a-z_][a-z0-9_.-]{0,31}")
WORKSPACE = re.compile(r"[a-z0-9_][a-z0-9_.-]{0,63}")
LABEL = re.compile(r"[a-z][a-z0-9_.:-]{0,63}")
BACKEND = re.compile(r"[a-z][a-z0-9_-]{0,31}")
SESSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
EMAIL = re.compile(r"[^@\s]{1,64}@[^@\s]{1,189}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
MAX_CONFIG_BYTES = 64 * 1024


def _shown(value: object) -> str:
    return repr(value)[:80]


def check_username(name: str, *, field: str = "username") -> str:
    """``name`` if it is a valid user name: lowercase, 1-32 chars, ``[a-z_][a-z0-9_.-]*``."""
    if not isinstance(name, str) or not USERNAME.fullmatch(name):
        raise InvalidInput(
            field,
            f"{_shown(name)} is not a valid user name "
            "(1-32 characters: a-z 0-9 _ . -, starting with a letter or _)",
        )
    return name


def check_workspace(name: str, *, field: str = "workspace") -> str:
    """``name`` if it is a valid workspace name (1-64 chars of a-z 0-9 _ . -)."""
    if not isinstance(name, str) or not WORKSPACE.fullmatch(name):
        raise InvalidInput(
            field, f"{_shown(name)} is not a valid workspace name (1-64 characters: a-z 0-9 _ . -)"
        )
    return name


def check_labels(values: Iterable[str], *, field: str) -> list[str]:
    """Role or group names, deduplicated in order; each ``[a-z][a-z0-9_.:-]*``, at most 64."""
    if isinstance(values, str):
        raise InvalidInput(field, "expected a list of names, got a string")
    out: list[str] = []
    for value in values:
        if not isinstance(value, str) or not LABEL.fullmatch(value):
            raise InvalidInput(field, f"{_shown(value)} is not a valid name (a-z 0-9 _ . : -)")
        if value not in out:
            out.append(value)
    if len(out) > 64:
        raise InvalidInput(field, "at most 64 entries")
    return out


def check_text(value: str, *, field: str, limit: int) -> str:
    """Free text without control characters, at most ``limit`` characters, stripped."""
    if not isinstance(value, str):
        raise InvalidInput(field, "expected text")
    if _CONTROL.search(value):
        raise InvalidInput(field, "control characters are not allowed")
    value = value.strip()
    if len(value) > limit:
        raise InvalidInput(field, f"longer than {limit} characters")
    return value


def check_email(value: str) -> str:
    """An e-mail address (loosely: ``local@domain``) or the empty string."""
    value = check_text(value, field="email", limit=254)
    if value and not EMAIL.fullmatch(value):
        raise InvalidInput("email", f"{_shown(value)} is not an e-mail address")
    return value


def check_backend(value: str) -> str:
    """A backend name such as ``local``, ``sshd``, ``kubernetes``."""
    if not isinstance(value, str) or not BACKEND.fullmatch(value):
        raise InvalidInput("backend", f"{_shown(value)} is not a valid backend name")
    return value


def check_config(value: dict[str, Any]) -> dict[str, Any]:
    """A JSON object of at most 64 KiB, returned as a deep copy."""
    if not isinstance(value, dict):
        raise InvalidInput("config", "expected a JSON object")
    try:
        encoded = json.dumps(value, sort_keys=True)
    except (TypeError, ValueError) as err:
        raise InvalidInput("config", f"not JSON-serializable: {err}") from err
    if len(encoded) > MAX_CONFIG_BYTES:
        raise InvalidInput("config", f"larger than {MAX_CONFIG_BYTES} bytes")
    copied: dict[str, Any] = json.loads(encoded)
    return copied


def check_session_id(value: str) -> str:
    """A session id: 1-64 chars of ``A-Za-z0-9_.-``."""
    if not isinstance(value, str) or not SESSION_ID.fullmatch(value):
        raise InvalidInput("session_id", f"{_shown(value)} is not a valid session id")
    return value


def check_endpoint(ip: str, port: int) -> tuple[str, int]:
    """A client address (IPv4/IPv6 text, normalized) and port 0-65535."""
    try:
        address = str(ipaddress.ip_address(ip))
    except ValueError as err:
        raise InvalidInput("client_ip", f"{_shown(ip)} is not an IP address") from err
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise InvalidInput("client_port", f"{_shown(port)} is not a port number")
    return address, port

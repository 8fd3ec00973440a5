"""What identity hands out: frozen dataclasses, never ORM rows, never secrets."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

__all__ = ["SessionInfo", "SshKey", "User", "Workspace"]


@dataclass(frozen=True)
class SshKey:
    """A registered SSH public key."""

    fingerprint: str
    """``SHA256:...`` as ``ssh-keygen -lf`` prints it."""
    key_type: str
    bits: int
    comment: str
    public_key: str
    """``type base64`` (authorized_keys form, without options or comment)."""
    created_at: datetime


@dataclass(frozen=True)
class User:
    """A user and their keys. Secrets are only reported as present or absent."""

    name: str
    display_name: str
    email: str
    roles: tuple[str, ...]
    groups: tuple[str, ...]
    disabled: bool
    has_password: bool
    totp_enabled: bool
    created_at: datetime
    keys: tuple[SshKey, ...]


@dataclass(frozen=True)
class Workspace:
    """A workspace; ``backend`` (``local``, ``sshd``, ``kubernetes`` ...) says how it is reached."""

    name: str
    owner: str
    backend: str
    config: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True)
class SessionInfo:
    """One SSH session; ``ended_at`` is None while it is live."""

    session_id: str
    username: str
    workspace: str
    client_ip: str
    client_port: int
    started_at: datetime
    ended_at: datetime | None
    exit_status: int | None
    bytes_in: int
    bytes_out: int
    recording: str | None
    end_reason: str

    @property
    def live(self) -> bool:
        return self.ended_at is None

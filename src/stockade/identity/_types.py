"""What identity hands out: frozen dataclasses, never ORM rows, never secrets."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

__all__ = [
    "AuthFailure",
    "OpenedSession",
    "Principal",
    "SessionInfo",
    "SessionRequest",
    "SshKey",
    "User",
    "Workspace",
]


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
    gateway_id: str = ""
    """The gateway that holds (or held) the session."""
    kind: str = "session"
    """``session`` (an SSH login) or ``connection`` (forwarding only, ``ssh -N``)."""
    fingerprint: str | None = None
    """The key the login used (None for a password)."""

    @property
    def live(self) -> bool:
        return self.ended_at is None


@dataclass(frozen=True)
class Principal:
    """Who a credential proved to be, and where they asked to go: the answer of
    ``authenticate_key`` / ``authenticate_password``, bound to the target and credential it was
    asked for."""

    username: str
    roles: tuple[str, ...]
    groups: tuple[str, ...]
    auth_methods: tuple[str, ...]
    """Methods the user has enrolled (``publickey``, ``password``, ``totp``), for policy."""
    workspace: Workspace
    method: str
    """``publickey`` or ``password``."""
    fingerprint: str | None = None
    """The key that was checked (``publickey``)."""
    target: str = ""
    """The SSH username as the client sent it (``alice`` or ``alice+ws2``)."""

    @property
    def name(self) -> str:
        return self.username


@dataclass(frozen=True)
class AuthFailure:
    """Why a credential was refused. ``reason`` is for logs and SSH Shield, never for the peer:
    every refusal looks the same from outside."""

    reason: str
    """``invalid_username``, ``unknown_user``, ``user_disabled``, ``unknown_workspace``,
    ``unknown_key``, ``key_not_owned``, ``bad_password``, ``no_password``."""


@dataclass(frozen=True)
class SessionRequest:
    """What ``open_session`` records besides the principal."""

    client_ip: str
    client_port: int
    gateway_id: str
    boot_id: str
    """The gateway process's boot id: sessions of an earlier boot are ended at its start."""
    kind: str = "session"
    ttl: int = 86400
    """Lifetime of the session token (seconds); it is revoked when the session ends anyway."""
    recording: str | None = None
    """The recording the session will write (policy said ``record_session``; ``{session_id}``
    is replaced by the new id), stored at once so a crash leaves a findable, playable cast."""


@dataclass(frozen=True)
class OpenedSession:
    """A session row and the token bound to it (``sid``), created in one call."""

    session_id: str
    token: str


@dataclass(frozen=True)
class Heartbeat:
    """What :meth:`IdentityAPI.heartbeat` answers a gateway.

    ``alive`` is False when this boot had already been declared dead (its heartbeat went stale:
    its sessions are ended and it must not serve them); ``ended`` are the sessions of dead
    gateways this heartbeat ended (reason ``gateway_lost``)."""

    alive: bool
    ended: tuple[SessionInfo, ...] = ()

"""The interface other services are written against (gateway, broker).

:class:`~stockade.identity.IdentityService` and the gRPC client
(``stockade.rpc.IdentityClient``) both satisfy it (a test checks), so a service never knows
whether identity runs in its process.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from ._tokens import Claims
from ._types import AuthFailure, Heartbeat, OpenedSession, Principal, SessionInfo, SessionRequest

__all__ = ["IdentityAPI"]


@runtime_checkable
class IdentityAPI(Protocol):
    """Logins, the session registry and token checks.

    ``authenticate_*`` never raise for a refused credential: they answer an
    :class:`AuthFailure` whose reason is for logs. Everything else raises
    :mod:`stockade.core.errors` classes (``NotFound``, ``InvalidInput``, ``StoreUnavailable``).
    """

    async def authenticate_key(self, target: str, fingerprint: str) -> Principal | AuthFailure:
        """Who may log in as ``target`` with key ``fingerprint`` (one transaction)."""
        ...

    async def authenticate_password(self, target: str, password: str) -> Principal | AuthFailure:
        """As :meth:`authenticate_key`, for a password (constant cost)."""
        ...

    async def verify_totp(self, name: str, code: str) -> bool:
        """Is ``code`` the user's current, unused TOTP code?"""
        ...

    async def open_session(self, principal: Principal, request: SessionRequest) -> OpenedSession:
        """Record a live session and issue its token (one call)."""
        ...

    async def end_session(
        self,
        session_id: str,
        *,
        exit_status: int | None = None,
        bytes_in: int = 0,
        bytes_out: int = 0,
        recording: str | None = None,
        reason: str = "",
    ) -> SessionInfo:
        """Mark a session ended (its token stops verifying); the first end wins."""
        ...

    async def kill_session(
        self, session_id: str, *, by: str = "", message: str = ...
    ) -> SessionInfo:
        """End a live session now and tell the gateway holding it to close it."""
        ...

    async def end_stale_sessions(self, gateway_id: str, boot_id: str) -> list[SessionInfo]:
        """End what an earlier boot of ``gateway_id`` left open (reason ``crashed``)."""
        ...

    async def heartbeat(
        self, gateway_id: str, boot_id: str, *, stale_after: float, stopping: bool = False
    ) -> Heartbeat:
        """Record a beat of this gateway boot; end the sessions of boots silent for longer
        than ``stale_after`` seconds. ``alive`` False: this boot was declared dead."""
        ...

    async def get_session(self, session_id: str) -> SessionInfo:
        """One session; NotFound if there is none."""
        ...

    async def list_sessions(
        self, *, active_only: bool = False, username: str | None = None, limit: int = 1000
    ) -> Sequence[SessionInfo]:
        """Sessions, newest first."""
        ...

    async def verify_token(self, token: str, *, audience: str | None = None) -> Claims:
        """The claims of a valid token (current roles), else TokenRejected."""
        ...

"""What the gateway needs from its collaborators, described as protocols.

In one process these are the real :mod:`stockade.identity`, :mod:`stockade.authz` and
:mod:`stockade.bus` objects; split apart they are gRPC clients with the same methods. The
gateway calls exactly the methods listed here and nothing else, so a collaborator that offers
them (sync or async where noted) plugs in.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from stockade.core.events import Event

__all__ = [
    "AuthzPort",
    "DecisionLike",
    "DenyList",
    "EventPublisher",
    "IdentityPort",
    "KeyLike",
    "SessionLike",
    "UserLike",
    "WorkspaceLike",
]


class KeyLike(Protocol):
    """A registered SSH key."""

    @property
    def fingerprint(self) -> str: ...


class UserLike(Protocol):
    """A user as identity returns it."""

    @property
    def name(self) -> str: ...
    @property
    def roles(self) -> Sequence[str]: ...
    @property
    def groups(self) -> Sequence[str]: ...
    @property
    def disabled(self) -> bool: ...
    @property
    def keys(self) -> Sequence[KeyLike]: ...


class WorkspaceLike(Protocol):
    """A registered workspace: which backend serves it and how (``config``)."""

    @property
    def name(self) -> str: ...
    @property
    def owner(self) -> str: ...
    @property
    def backend(self) -> str: ...
    @property
    def config(self) -> Mapping[str, Any]: ...


class SessionLike(Protocol):
    """A session row as the registry returns it."""

    @property
    def session_id(self) -> str: ...
    @property
    def username(self) -> str: ...
    @property
    def workspace(self) -> str: ...


class DecisionLike(Protocol):
    """An authorization decision (``data.stockade.decision``)."""

    @property
    def allow(self) -> bool: ...
    @property
    def obligations(self) -> Any: ...
    @property
    def reasons(self) -> Sequence[str]: ...


class IdentityPort(Protocol):
    """Users, keys, credentials, workspaces and the session registry.

    ``get_user``, ``get_workspace`` and ``default_workspace`` raise
    :class:`~stockade.core.errors.NotFound` for a missing name.
    """

    async def get_user(self, name: str) -> UserLike: ...

    async def key_owner(self, fingerprint: str) -> str | None: ...

    async def lookup_key(self, username: str, fingerprint: str) -> UserLike | None: ...

    async def verify_password(self, name: str, password: str) -> bool: ...

    async def verify_totp(self, name: str, code: str) -> bool: ...

    async def get_workspace(self, name: str) -> WorkspaceLike: ...

    async def default_workspace(self, username: str) -> WorkspaceLike: ...

    async def start_session(
        self, session_id: str, *, username: str, workspace: str, client_ip: str, client_port: int
    ) -> Any: ...

    async def end_session(
        self,
        session_id: str,
        *,
        exit_status: int | None = None,
        bytes_in: int = 0,
        bytes_out: int = 0,
        recording: str | None = None,
        reason: str = "",
    ) -> Any: ...

    async def list_sessions(
        self, *, active_only: bool = False, username: str | None = None, limit: int = 1000
    ) -> Sequence[SessionLike]: ...

    async def issue_token(
        self, username: str, *, session_id: str | None = None, ttl: int | None = None
    ) -> str: ...


class AuthzPort(Protocol):
    """Policy decisions on an input document built by ``stockade.authz.build_input``."""

    def decide(self, input_doc: Mapping[str, Any]) -> DecisionLike | Awaitable[DecisionLike]: ...


class EventPublisher(Protocol):
    """Publishes :mod:`stockade.core.events` events (the bus)."""

    async def publish(self, event: Event) -> Any: ...


@runtime_checkable
class DenyList(Protocol):
    """Banned source addresses (SSH Shield); asked at TCP accept, before any SSH byte."""

    def is_banned(self, ip: str) -> bool: ...

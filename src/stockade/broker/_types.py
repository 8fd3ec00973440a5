"""What the broker calls and what its backends return.

The collaborators are described as :class:`typing.Protocol` so the broker works the same with the
in-process services and their gRPC clients: :class:`TokenVerifier` (identity),
:class:`PolicyDecider` (authz), :class:`EventPublisher` (the bus) and :class:`CredentialBackend`
(Vault, Kubernetes).
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

from stockade.core.events import EventPublisher

__all__ = [
    "KINDS",
    "SESSION_STATE",
    "AuditSearcher",
    "ClaimsLike",
    "Credential",
    "CredentialBackend",
    "CredentialQuery",
    "DecisionLike",
    "EventPublisher",
    "Kind",
    "PolicyDecider",
    "SessionBinding",
    "TokenVerifier",
]

Kind = Literal["git", "docker", "kubernetes"]
#: The credential kinds the broker serves, in the order of its API.
KINDS: tuple[Kind, ...] = ("git", "docker", "kubernetes")


class ClaimsLike(Protocol):
    """The verified claims the broker reads (``stockade.identity.Claims`` satisfies it)."""

    @property
    def sub(self) -> str: ...
    @property
    def sid(self) -> str | None: ...
    @property
    def exp(self) -> datetime: ...
    @property
    def roles(self) -> tuple[str, ...]: ...
    @property
    def groups(self) -> tuple[str, ...]: ...


#: Key of the request state under which a per-session socket names its session (a
#: :class:`SessionBinding`); set by the socket listener only, never from request data.
SESSION_STATE = "stockade_session"


class SessionBinding(Protocol):
    """What a per-session socket tells the app about its requests."""

    async def authenticate(self, *, audience: str | None) -> ClaimsLike: ...


class TokenVerifier(Protocol):
    """Identity's token check (``stockade.identity.IdentityService`` satisfies it).

    ``verify_token`` checks signature, ``iss``, ``aud`` (``audience``, else identity's default),
    ``exp``, the ``kid`` and that the session is live; it raises
    :class:`~stockade.core.errors.TokenRejected` with a ``reason`` otherwise.
    """

    async def verify_token(self, token: str, *, audience: str | None = None) -> ClaimsLike: ...


class DecisionLike(Protocol):
    """An authorization verdict (``stockade.authz.Decision`` satisfies it)."""

    @property
    def allow(self) -> bool: ...
    @property
    def reasons(self) -> Sequence[str]: ...


class PolicyDecider(Protocol):
    """Authz: never raises, a failure is a deny. ``stockade.authz.Authorizer`` answers at once;
    its gRPC client (``stockade.rpc.AuthzClient``) answers with an awaitable."""

    def decide(self, input_doc: Mapping[str, Any]) -> DecisionLike | Awaitable[DecisionLike]: ...


class AuditSearcher(Protocol):
    """The audit store's search (``stockade.audit.AuditSearch`` satisfies it).

    ``search_params`` takes the HTTP query parameters as given (``user``, ``action``,
    ``decision``, ``source``, ``session``, ``since``, ``until``, ``limit``, ``before``), validates
    them (raising :class:`~stockade.core.errors.InvalidInput` naming the parameter) and answers
    ``{"events": [...], "next_before": int | None}``, newest first.
    """

    async def search_params(self, params: Mapping[str, str]) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class CredentialQuery:
    """One credential wanted: ``kind`` for ``target`` (git host, registry, cluster) of ``user``."""

    kind: Kind
    target: str
    user: str
    session_id: str | None = None


@dataclass(frozen=True, slots=True)
class Credential:
    """A credential as a backend returns it. ``secret`` never appears in a repr.

    ``secret`` is the git password, the registry secret or the Kubernetes token; ``expires_at``
    is when the backend says it stops working (``None``: not known).
    """

    username: str
    secret: str = field(repr=False)
    expires_at: datetime | None = None

    def __repr__(self) -> str:
        return f"Credential(username={self.username!r}, secret='[secure]')"


class CredentialBackend(Protocol):
    """A source of credentials.

    ``get`` raises :class:`~stockade.core.errors.NotFound` when nothing is stored for the query
    and :class:`~stockade.core.errors.SecretsBackendUnavailable` when the backend cannot answer;
    no other exception leaves it. ``list_targets`` maps each stored target of ``kind`` to its
    user name (for ``docker-credential-* list``), never a secret.
    """

    name: str

    async def get(self, query: CredentialQuery) -> Credential: ...

    async def list_targets(self, *, user: str, kind: Kind) -> dict[str, str]: ...

    async def aclose(self) -> None: ...

"""Event schemas and NATS subject names: the one place for both.

Every event is a frozen pydantic model with a ``v`` schema version, snake_case fields, and a
timezone-aware ``at``. Publishers call ``event.to_bytes()``; consumers call
``Model.from_bytes(data)``, which raises :class:`~stockade.core.errors.InvalidInput` for anything
malformed, oversized or of another schema version.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import InvalidInput

__all__ = [
    "MAX_EVENT_BYTES",
    "STREAMS",
    "STREAM_AUTH",
    "SUBJECT_AUTHZ_DECISION",
    "SUBJECT_AUTH_FAILED",
    "SUBJECT_AUTH_SUCCEEDED",
    "SUBJECT_CREDENTIAL_REQUEST",
    "SUBJECT_DEAD_LETTER_PREFIX",
    "SUBJECT_SERVICE_REJECTED",
    "SUBJECT_SESSION_ENDED",
    "SUBJECT_SESSION_STARTED",
    "SUBJECT_SHIELD_BAN",
    "SUBJECT_SHIELD_UNBAN",
    "AuthFailed",
    "AuthSucceeded",
    "CredentialRequest",
    "DecisionRecord",
    "Event",
    "ServiceCallRejected",
    "SessionEnded",
    "SessionStarted",
    "ShieldBan",
    "ShieldUnban",
    "utcnow",
]

MAX_EVENT_BYTES = 64 * 1024

SUBJECT_AUTH_FAILED = "stockade.auth.failed"
SUBJECT_AUTH_SUCCEEDED = "stockade.auth.succeeded"
SUBJECT_AUTHZ_DECISION = "stockade.authz.decision"
SUBJECT_SESSION_STARTED = "stockade.session.started"
SUBJECT_SESSION_ENDED = "stockade.session.ended"
SUBJECT_SHIELD_BAN = "stockade.shield.ban"
SUBJECT_SHIELD_UNBAN = "stockade.shield.unban"
SUBJECT_CREDENTIAL_REQUEST = "stockade.credential.request"
#: A service-to-service call refused for its projected token (``stockade.tls``'s checks).
SUBJECT_SERVICE_REJECTED = "stockade.service.rejected"
#: Consumers copy messages they can never handle to ``<prefix>.<durable>`` (bus dead letters).
SUBJECT_DEAD_LETTER_PREFIX = "stockade.deadletter"

#: The stream of authentication events (what SSH Shield consumes).
STREAM_AUTH = "STOCKADE_AUTH"

#: JetStream streams: name -> subjects. Created idempotently by the bus at start.
STREAMS: dict[str, list[str]] = {
    STREAM_AUTH: ["stockade.auth.>"],
    "STOCKADE_AUDIT": [
        "stockade.authz.>",
        "stockade.session.>",
        "stockade.shield.>",
        "stockade.credential.>",
        "stockade.service.>",
    ],
    "STOCKADE_DEADLETTER": ["stockade.deadletter.>"],
}


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


class Event(BaseModel):
    """Base of every bus event."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    subject: ClassVar[str]
    v: Literal[1] = 1
    at: datetime = Field(default_factory=utcnow)

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        if len(data) > MAX_EVENT_BYTES:
            raise InvalidInput(cls.subject, f"event of {len(data)} bytes exceeds {MAX_EVENT_BYTES}")
        try:
            return cls.model_validate_json(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "event"
            raise InvalidInput(f"{cls.subject}: {where}", first["msg"]) from exc


class AuthFailed(Event):
    """One failed authentication attempt at the gateway."""

    subject: ClassVar[str] = SUBJECT_AUTH_FAILED
    client_ip: str = Field(max_length=64)
    client_port: int = Field(ge=0, le=65535)
    username: str = Field(max_length=256)
    method: str = Field(max_length=32)
    reason: str = Field(max_length=64)
    gateway_id: str = Field(max_length=128)


class AuthSucceeded(Event):
    """A successful authentication at the gateway."""

    subject: ClassVar[str] = SUBJECT_AUTH_SUCCEEDED
    client_ip: str = Field(max_length=64)
    client_port: int = Field(ge=0, le=65535)
    username: str = Field(max_length=256)
    method: str = Field(max_length=32)
    gateway_id: str = Field(max_length=128)


class DecisionRecord(Event):
    """An authorization decision; identical ones within the fold window carry a ``count``."""

    subject: ClassVar[str] = SUBJECT_AUTHZ_DECISION
    action: str
    resource: dict[str, Any]
    user: str
    allow: bool
    reasons: list[str]
    obligations: dict[str, Any]
    count: int = 1
    first_at: datetime = Field(default_factory=utcnow)


class SessionStarted(Event):
    subject: ClassVar[str] = SUBJECT_SESSION_STARTED
    session_id: str
    username: str
    workspace: str
    client_ip: str


class SessionEnded(Event):
    subject: ClassVar[str] = SUBJECT_SESSION_ENDED
    session_id: str
    username: str
    exit_status: int | None = None
    reason: str = ""


class ShieldBan(Event):
    subject: ClassVar[str] = SUBJECT_SHIELD_BAN
    source: str
    until: datetime
    strikes: int
    reason: str


class ShieldUnban(Event):
    subject: ClassVar[str] = SUBJECT_SHIELD_UNBAN
    source: str
    reason: str


class CredentialRequest(Event):
    subject: ClassVar[str] = SUBJECT_CREDENTIAL_REQUEST
    username: str
    session_id: str
    kind: str
    target: str
    allow: bool
    reason: str = ""
    backend_ms: float = 0.0


class ServiceCallRejected(Event):
    """A gRPC call between services refused: no token, a bad one, or a method not allowed."""

    subject: ClassVar[str] = SUBJECT_SERVICE_REJECTED
    method: str = Field(max_length=256)
    reason: str = Field(max_length=64)
    status: str = Field(max_length=32)
    peer: str = Field(max_length=128)
    caller: str = Field(default="", max_length=256)

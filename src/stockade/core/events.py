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
    "SUBJECT_SESSION_ENDED",
    "SUBJECT_SESSION_KILL",
    "SUBJECT_SESSION_STARTED",
    "SUBJECT_SHIELD_BAN",
    "SUBJECT_SHIELD_UNBAN",
    "SUBJECT_SHIELD_USER_BAN",
    "SUBJECT_WORKTRACE_ALERT",
    "AuthFailed",
    "AuthSucceeded",
    "CredentialRequest",
    "DecisionRecord",
    "Event",
    "SessionEnded",
    "SessionKill",
    "SessionStarted",
    "ShieldBan",
    "ShieldUnban",
    "UserBan",
    "WorktraceAlert",
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
#: Worktrace detections (rule matches, attack paths, anomalies).
SUBJECT_WORKTRACE_ALERT = "stockade.worktrace.alert"
#: End a live session now (the gateway consumes it).
SUBJECT_SESSION_KILL = "stockade.session.kill"
#: Ban a user (not a source address) from logging in for a while.
SUBJECT_SHIELD_USER_BAN = "stockade.shield.user_ban"
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
        "stockade.worktrace.>",
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


class WorktraceAlert(Event):
    """A Worktrace detection, tied to the workspace, user and session it happened in.

    ``kind`` is ``rule`` (``rule_id`` names the rule), ``attack_path`` (``rule_id`` names the
    path, ``rules`` its rules, ``confidence`` is ``1 - prod(1 - c_i)``) or ``anomaly`` (a rare
    process ancestry; ``confidence`` is its rarity). ``event`` is the matching Tetragon event
    (``{"truncated": true, ...}`` when it is too large to carry).
    """

    subject: ClassVar[str] = SUBJECT_WORKTRACE_ALERT
    alert_id: str = Field(max_length=64)
    kind: Literal["rule", "attack_path", "anomaly"]
    rule_id: str = Field(max_length=128)
    name: str = Field(max_length=512)
    confidence: float = Field(ge=0, le=1)
    workspace: str | None = Field(default=None, max_length=253)
    username: str | None = Field(default=None, max_length=256)
    session_id: str | None = Field(default=None, max_length=128)
    blueprint: str | None = Field(default=None, max_length=253)
    pod_namespace: str | None = Field(default=None, max_length=253)
    pod_name: str | None = Field(default=None, max_length=253)
    node: str = Field(default="", max_length=253)
    binary: str = Field(default="", max_length=4096)
    arguments: str = Field(default="", max_length=8192)
    ancestry: list[str] = Field(default_factory=list, max_length=64)
    rules: list[str] = Field(default_factory=list, max_length=64)
    event_type: str = Field(default="", max_length=64)
    event_time: datetime | None = None
    event: dict[str, Any] = Field(default_factory=dict)


class SessionKill(Event):
    """End the live session ``session_id`` now; ``by`` says who asked (``worktrace``, an admin)."""

    subject: ClassVar[str] = SUBJECT_SESSION_KILL
    session_id: str = Field(min_length=1, max_length=128)
    username: str | None = Field(default=None, max_length=256)
    reason: str = Field(max_length=512)
    by: str = Field(max_length=256)


class UserBan(Event):
    """Refuse logins of ``username`` until ``until`` (the ``ShieldBan`` of a user)."""

    subject: ClassVar[str] = SUBJECT_SHIELD_USER_BAN
    username: str = Field(min_length=1, max_length=256)
    until: datetime
    reason: str = Field(max_length=512)
    by: str = Field(max_length=256)

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
    "STREAM_AUDIT",
    "STREAM_AUDIT_HEADS",
    "STREAM_AUTH",
    "SUBJECT_AUDIT_HEAD",
    "SUBJECT_AUTHZ_DECISION",
    "SUBJECT_AUTH_FAILED",
    "SUBJECT_AUTH_SUCCEEDED",
    "SUBJECT_BLUEPRINT_CHANGED",
    "SUBJECT_CREDENTIAL_REQUEST",
    "SUBJECT_DEAD_LETTER_PREFIX",
    "SUBJECT_FILE_TRANSFER",
    "SUBJECT_IDENTITY_CHANGED",
    "SUBJECT_POLICY_RELOADED",
    "SUBJECT_RECORDINGS_SWEPT",
    "SUBJECT_SESSION_ENDED",
    "SUBJECT_SESSION_STARTED",
    "SUBJECT_SHIELD_BAN",
    "SUBJECT_SHIELD_UNBAN",
    "AuditHead",
    "AuthFailed",
    "AuthSucceeded",
    "BlueprintChanged",
    "CredentialRequest",
    "DecisionRecord",
    "Event",
    "FileTransfer",
    "IdentityChanged",
    "PolicyReloaded",
    "RecordingsSwept",
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
#: Consumers copy messages they can never handle to ``<prefix>.<durable>`` (bus dead letters).
SUBJECT_DEAD_LETTER_PREFIX = "stockade.deadletter"

#: The stream of authentication events (what SSH Shield consumes).
STREAM_AUTH = "STOCKADE_AUTH"
#: The stream of every other audited event (what the audit store consumes, with STREAM_AUTH).
STREAM_AUDIT = "STOCKADE_AUDIT"
#: The audit store's signed chain heads (witnesses kept outside the store).
STREAM_AUDIT_HEADS = "STOCKADE_AUDIT_HEADS"
SUBJECT_IDENTITY_CHANGED = "stockade.identity.changed"
SUBJECT_POLICY_RELOADED = "stockade.policy.reloaded"
SUBJECT_FILE_TRANSFER = "stockade.session.file"
SUBJECT_BLUEPRINT_CHANGED = "stockade.blueprint.changed"
SUBJECT_RECORDINGS_SWEPT = "stockade.recording.swept"
SUBJECT_AUDIT_HEAD = "stockade.audithead.signed"

#: JetStream streams: name -> subjects. Created idempotently by the bus at start.
STREAMS: dict[str, list[str]] = {
    STREAM_AUTH: ["stockade.auth.>"],
    STREAM_AUDIT: [
        "stockade.authz.>",
        "stockade.session.>",
        "stockade.shield.>",
        "stockade.credential.>",
        "stockade.identity.>",
        "stockade.policy.>",
        "stockade.blueprint.>",
        "stockade.recording.>",
    ],
    STREAM_AUDIT_HEADS: ["stockade.audithead.>"],
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


class IdentityChanged(Event):
    """A change to identity data: users, keys, roles, passwords, TOTP, workspaces."""

    subject: ClassVar[str] = SUBJECT_IDENTITY_CHANGED
    actor: str = Field(max_length=256)
    """Who made the change (a user name, or ``system``)."""
    action: str = Field(max_length=64)
    """What changed, e.g. ``user.create``, ``user.disable``, ``key.add``, ``role.grant``."""
    target: str = Field(max_length=256)
    """The user (or workspace) changed."""
    details: dict[str, Any] = {}
    """Non-secret particulars (a key's fingerprint, the roles granted); never a secret."""


class PolicyReloaded(Event):
    """The authz bundle was (re)loaded, or a reload failed and the old bundle stays."""

    subject: ClassVar[str] = SUBJECT_POLICY_RELOADED
    source: str = Field(max_length=1024)
    """The bundle's directory, or ``builtin``."""
    digest: str = Field(default="", max_length=128)
    """SHA-256 of the bundle's files as loaded."""
    ok: bool = True
    error: str = Field(default="", max_length=1024)


class FileTransfer(Event):
    """A file copied into (``upload``) or out of (``download``) a workspace (scp, sftp)."""

    subject: ClassVar[str] = SUBJECT_FILE_TRANSFER
    session_id: str = Field(max_length=64)
    username: str = Field(max_length=256)
    direction: Literal["upload", "download"]
    path: str = Field(max_length=4096)
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class BlueprintChanged(Event):
    """A workspace blueprint was created, updated or deleted."""

    subject: ClassVar[str] = SUBJECT_BLUEPRINT_CHANGED
    actor: str = Field(max_length=256)
    name: str = Field(max_length=256)
    action: Literal["create", "update", "delete"]
    digest: str = Field(default="", max_length=128)
    """SHA-256 of the blueprint as stored after the change (empty on delete)."""


class RecordingsSwept(Event):
    """The recording retention sweep ran (daily): what it removed."""

    subject: ClassVar[str] = SUBJECT_RECORDINGS_SWEPT
    directory: str = Field(max_length=4096)
    keep_seconds: int = Field(ge=0)
    removed: list[str] = Field(default_factory=list, max_length=1000)
    """Names of the files removed (at most 1000 listed; ``removed_count`` is the total)."""
    removed_count: int = Field(default=0, ge=0)
    removed_bytes: int = Field(default=0, ge=0)


class AuditHead(Event):
    """A signed head of the audit store's hash chain (see ``stockade.audit``)."""

    subject: ClassVar[str] = SUBJECT_AUDIT_HEAD
    first: int = Field(ge=1)
    """The first row this head covers (the row after the previous head)."""
    last: int = Field(ge=1)
    """The row whose chain hash this head signs."""
    chain_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    digests: str
    """Base64 of the 16-byte content digests of rows ``first`` to ``last`` (to locate a row
    rewritten with a recomputed chain)."""
    key_id: str = Field(pattern=r"^[0-9a-f]{64}$")
    """SHA-256 of the raw Ed25519 public key."""
    signature: str
    """Base64 Ed25519 signature over the head's canonical form (see ``stockade.audit``)."""

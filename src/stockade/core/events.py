"""Event schemas and NATS subject names: the one place for both.

Every event is a frozen pydantic model with a ``v`` schema version, snake_case fields, and a
timezone-aware ``at``. Publishers call ``event.to_bytes()``; consumers call
``Model.from_bytes(data)``, which raises :class:`~stockade.core.errors.InvalidInput` for anything
malformed, oversized or of another schema version.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal, Protocol, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import InvalidInput

__all__ = [
    "MAX_BATCH_FAILURES",
    "MAX_EVENT_BYTES",
    "STREAMS",
    "STREAM_AUDIT",
    "STREAM_AUDIT_HEADS",
    "STREAM_AUTH",
    "SUBJECT_AUDIT_HEAD",
    "SUBJECT_AUTHZ_DECISION",
    "SUBJECT_AUTH_FAILED",
    "SUBJECT_AUTH_FAILED_BATCH",
    "SUBJECT_AUTH_SUCCEEDED",
    "SUBJECT_BLUEPRINT_CHANGED",
    "SUBJECT_CREDENTIAL_REQUEST",
    "SUBJECT_DEAD_LETTER_PREFIX",
    "SUBJECT_FILE_TRANSFER",
    "SUBJECT_IDENTITY_CHANGED",
    "SUBJECT_POLICY_RELOADED",
    "SUBJECT_RECORDINGS_SWEPT",
    "SUBJECT_SERVICE_REJECTED",
    "SUBJECT_SESSION_ENDED",
    "SUBJECT_SESSION_KILL",
    "SUBJECT_SESSION_STARTED",
    "SUBJECT_SHIELD_BAN",
    "SUBJECT_SHIELD_UNBAN",
    "SUBJECT_SHIELD_USER_BAN",
    "SUBJECT_WORKTRACE_ALERT",
    "AuditHead",
    "AuthFailed",
    "AuthFailedBatch",
    "AuthSucceeded",
    "BlueprintChanged",
    "CredentialRequest",
    "DecisionRecord",
    "Event",
    "EventPublisher",
    "FileTransfer",
    "IdentityChanged",
    "PolicyReloaded",
    "RecordingsSwept",
    "ServiceCallRejected",
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
#: Many failures in one message (:class:`AuthFailedBatch`); in :data:`STREAM_AUTH` too.
SUBJECT_AUTH_FAILED_BATCH = "stockade.auth.failed.batch"
SUBJECT_AUTH_SUCCEEDED = "stockade.auth.succeeded"
SUBJECT_AUTHZ_DECISION = "stockade.authz.decision"
SUBJECT_SESSION_STARTED = "stockade.session.started"
SUBJECT_SESSION_ENDED = "stockade.session.ended"
#: Ask every gateway to end one session now (``stockade sessions kill``, Worktrace, revocation).
SUBJECT_SESSION_KILL = "stockade.session.kill"
#: One file moved by an audited transfer (scp under record_session).
SUBJECT_FILE_TRANSFER = "stockade.session.transfer"
#: A user, key or role changed: gateways re-check the live sessions of that user.
SUBJECT_IDENTITY_CHANGED = "stockade.identity.changed"
SUBJECT_SHIELD_BAN = "stockade.shield.ban"
SUBJECT_SHIELD_UNBAN = "stockade.shield.unban"
SUBJECT_CREDENTIAL_REQUEST = "stockade.credential.request"
#: A service-to-service call refused for its projected token (``stockade.tls``'s checks).
SUBJECT_SERVICE_REJECTED = "stockade.service.rejected"
#: Worktrace detections (rule matches, attack paths, anomalies).
SUBJECT_WORKTRACE_ALERT = "stockade.worktrace.alert"
#: Ban a user (not a source address) from logging in for a while.
SUBJECT_SHIELD_USER_BAN = "stockade.shield.user_ban"
#: Consumers copy messages they can never handle to ``<prefix>.<durable>`` (bus dead letters).
SUBJECT_DEAD_LETTER_PREFIX = "stockade.deadletter"

#: The stream of authentication events (what SSH Shield consumes).
STREAM_AUTH = "STOCKADE_AUTH"
#: The stream of every other audited event (what the audit store consumes, with STREAM_AUTH).
STREAM_AUDIT = "STOCKADE_AUDIT"
#: The audit store's signed chain heads (witnesses kept outside the store).
STREAM_AUDIT_HEADS = "STOCKADE_AUDIT_HEADS"
SUBJECT_POLICY_RELOADED = "stockade.policy.reloaded"
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
        "stockade.service.>",
        "stockade.worktrace.>",
        "stockade.policy.>",
        "stockade.blueprint.>",
        "stockade.recording.>",
    ],
    STREAM_AUDIT_HEADS: ["stockade.audithead.>"],
    "STOCKADE_DEADLETTER": ["stockade.deadletter.>"],
}


class EventPublisher(Protocol):
    """Publishes events (the bus, or anything with the same method)."""

    async def publish(self, event: Event) -> Any: ...


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
    """Why it ended: ``exited``, ``killed``, ``revoked``, ``crashed``, ``gateway_stopped``, ..."""


class SessionKill(Event):
    """End session ``session_id`` wherever it runs; its user reads ``message``."""

    subject: ClassVar[str] = SUBJECT_SESSION_KILL
    session_id: str = Field(max_length=64)
    """The session, or ``*`` with ``username``: every session of that user; or ``*`` with
    ``workspace_label``: every session in that workspace."""
    username: str | None = Field(default=None, max_length=256)
    workspace_label: str | None = Field(default=None, max_length=63)
    """The workspace as its Pod's ``stockade.dev/workspace`` label reads (a Worktrace alert
    from a Pod knows no session: one Pod serves them all, so all of them end)."""
    removed_workspace: str | None = Field(default=None, max_length=64)
    """With ``session_id`` ``*``: workspace ``removed_workspace`` (by its name) was removed.
    Every session in it ends, and each gateway drops what it kept for the workspace (its
    network namespace) once its sessions there have ended: a workspace re-created under that
    name starts clean."""
    reason: str = Field(default="killed", max_length=256)
    """The end reason recorded for the session (``killed``, ``revoked``, ``worktrace: ...``)."""
    message: str = Field(default="session terminated by an administrator", max_length=256)
    by: str = Field(default="", max_length=128)
    """Who asked (an admin's name, ``identity``, ``worktrace``)."""

    @model_validator(mode="after")
    def _one_target(self) -> Self:
        # a user *and* a workspace read differently at each end (the gateway ended everyone's
        # sessions in the workspace, the broker the user's in every workspace): malformed
        if self.workspace_label is not None and (
            self.session_id != "*" or self.username is not None or not self.workspace_label
        ):
            raise ValueError("workspace_label needs session_id '*', a value and no username")
        if self.removed_workspace is not None and (
            self.session_id != "*"
            or self.username is not None
            or self.workspace_label is not None
            or not self.removed_workspace
        ):
            raise ValueError("removed_workspace needs session_id '*', a value and nothing else")
        return self


IdentityChange = Literal[
    "user_added",
    "user_disabled",
    "user_enabled",
    "user_removed",
    "key_added",
    "key_removed",
    "roles_changed",
    "password_changed",
    "totp_changed",
]


class IdentityChanged(Event):
    """A change to a user; gateways close or re-decide that user's live sessions."""

    subject: ClassVar[str] = SUBJECT_IDENTITY_CHANGED
    username: str = Field(max_length=32)
    change: IdentityChange
    fingerprint: str | None = Field(default=None, max_length=64)
    """The key added or removed (``key_*`` changes)."""
    roles: list[str] = []
    """The user's roles after the change."""


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


class FileTransfer(Event):
    """One file of an audited transfer: its direction, path, size and SHA-256 (never its data)."""

    subject: ClassVar[str] = SUBJECT_FILE_TRANSFER
    session_id: str = Field(max_length=64)
    username: str = Field(max_length=32)
    direction: Literal["upload", "download"]
    path: str = Field(max_length=1024)
    size: int = Field(ge=0)
    sha256: str = Field(max_length=64)
    complete: bool = True
    """False when the transfer stopped before the file's last byte."""


#: Most failures one :class:`AuthFailedBatch` carries (stays well under MAX_EVENT_BYTES).
MAX_BATCH_FAILURES = 128


_Ip = Annotated[str, Field(max_length=64)]
_Port = Annotated[int, Field(ge=0, le=65535)]
_User = Annotated[str, Field(max_length=256)]
_Method = Annotated[str, Field(max_length=32)]
_Reason = Annotated[str, Field(max_length=64)]


class AuthFailedBatch(Event):
    """Failed authentication attempts of one gateway, published as one message.

    Columns, one entry per failure, all of the same length: ``at`` (epoch seconds), then the
    fields of :class:`AuthFailed`. Columns of plain values parse without building an object per
    failure. Consumers count each failure once: its identity is (stream sequence, index).
    """

    subject: ClassVar[str] = SUBJECT_AUTH_FAILED_BATCH
    gateway_id: str = Field(max_length=128)
    times: list[float] = Field(min_length=1, max_length=MAX_BATCH_FAILURES)
    client_ip: list[_Ip] = Field(max_length=MAX_BATCH_FAILURES)
    client_port: list[_Port] = Field(max_length=MAX_BATCH_FAILURES)
    username: list[_User] = Field(max_length=MAX_BATCH_FAILURES)
    method: list[_Method] = Field(max_length=MAX_BATCH_FAILURES)
    reason: list[_Reason] = Field(max_length=MAX_BATCH_FAILURES)

    @model_validator(mode="after")
    def _columns_align(self) -> Self:
        n = len(self.times)
        for name in ("client_ip", "client_port", "username", "method", "reason"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"column {name} has {len(getattr(self, name))} entries, not {n}")
        return self

    def __len__(self) -> int:
        return len(self.times)

    @classmethod
    def of(cls, failures: list[AuthFailed]) -> AuthFailedBatch:
        """One batch of ``failures`` (all of one gateway, at most MAX_BATCH_FAILURES)."""
        return cls(
            gateway_id=failures[0].gateway_id,
            times=[f.at.timestamp() for f in failures],
            client_ip=[f.client_ip for f in failures],
            client_port=[f.client_port for f in failures],
            username=[f.username for f in failures],
            method=[f.method for f in failures],
            reason=[f.reason for f in failures],
        )

    def failures(self) -> list[AuthFailed]:
        """The batch as single events (tools and audit; consumers read the columns)."""
        return [
            AuthFailed(
                at=datetime.fromtimestamp(at, UTC),
                client_ip=ip,
                client_port=port,
                username=user,
                method=method,
                reason=reason,
                gateway_id=self.gateway_id,
            )
            for at, ip, port, user, method, reason in zip(
                self.times, self.client_ip, self.client_port, self.username, self.method,
                self.reason, strict=True,
            )
        ]  # fmt: skip


class ServiceCallRejected(Event):
    """A gRPC call between services refused: no token, a bad one, or a method not allowed."""

    subject: ClassVar[str] = SUBJECT_SERVICE_REJECTED
    method: str = Field(max_length=256)
    reason: str = Field(max_length=64)
    status: str = Field(max_length=32)
    peer: str = Field(max_length=128)
    caller: str = Field(default="", max_length=256)


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


class UserBan(Event):
    """Refuse logins of ``username`` until ``until`` (the ``ShieldBan`` of a user)."""

    subject: ClassVar[str] = SUBJECT_SHIELD_USER_BAN
    username: str = Field(min_length=1, max_length=256)
    until: datetime
    reason: str = Field(max_length=512)
    by: str = Field(max_length=256)


class PolicyReloaded(Event):
    """The authz bundle was (re)loaded, or a reload failed and the old bundle stays."""

    subject: ClassVar[str] = SUBJECT_POLICY_RELOADED
    source: str = Field(max_length=1024)
    """The bundle's directory, or ``builtin``."""
    digest: str = Field(default="", max_length=128)
    """SHA-256 of the bundle's files as loaded."""
    ok: bool = True
    error: str = Field(default="", max_length=1024)


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

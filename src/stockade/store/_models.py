"""SQLAlchemy models: the tables identity (users, keys, workspaces, sessions) keeps.

Every timestamp is timezone-aware UTC (:class:`UtcDateTime`); secrets (password hash, sealed TOTP
secret) never appear in a ``repr``. Migrations in ``migrations/versions`` must match these models;
``tests/store/test_migrations.py`` checks that on SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from stockade.core.logging import REDACTED

__all__ = [
    "AuditEventRow",
    "Base",
    "BlueprintRow",
    "GatewayRow",
    "SessionRow",
    "SshKeyRow",
    "UserRow",
    "UtcDateTime",
    "WorkspaceRow",
]

#: Constraint names are deterministic so migrations, autogenerate and error mapping agree.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware datetime stored as UTC; naive values are refused on the way in."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UtcDateTime column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _now() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    """Declarative base of every Stockade table."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UtcDateTime()}


class UserRow(Base):
    """A person (or robot) who may log in. ``roles`` and ``groups`` are JSON lists of names."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(32), unique=True)
    display_name: Mapped[str] = mapped_column(String(128), default="")
    email: Mapped[str] = mapped_column(String(254), default="")
    roles: Mapped[list[str]] = mapped_column(JSON, default=list)
    groups: Mapped[list[str]] = mapped_column(JSON, default=list)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    password_hash: Mapped[str | None] = mapped_column(Text, default=None)
    totp_secret: Mapped[str | None] = mapped_column(Text, default=None)
    """Sealed (AES-GCM) by identity; never the raw secret."""
    totp_last_step: Mapped[int | None] = mapped_column(BigInteger, default=None)
    """The last TOTP time step accepted, so a code cannot be replayed."""
    oidc_subject: Mapped[str | None] = mapped_column(String(255), default=None)
    """``sub`` of the OIDC provider account that created this user (OIDC users only): later
    OIDC logins must present it, whatever their ``preferred_username`` says."""
    created_at: Mapped[datetime] = mapped_column(default=_now)

    keys: Mapped[list[SshKeyRow]] = relationship(
        back_populates="user",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="SshKeyRow.id",
    )

    def __repr__(self) -> str:
        password = REDACTED if self.password_hash else None
        totp = REDACTED if self.totp_secret else None
        return (
            f"UserRow(name={self.name!r}, roles={self.roles!r}, disabled={self.disabled!r}, "
            f"password_hash={password!r}, totp_secret={totp!r})"
        )


class SshKeyRow(Base):
    """An SSH public key; its SHA256 fingerprint is unique, so a key belongs to one user."""

    __tablename__ = "ssh_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True)
    key_type: Mapped[str] = mapped_column(String(64))
    bits: Mapped[int] = mapped_column(Integer)
    comment: Mapped[str] = mapped_column(String(256), default="")
    public_key: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=_now)

    user: Mapped[UserRow] = relationship(back_populates="keys")

    def __repr__(self) -> str:
        return f"SshKeyRow(fingerprint={self.fingerprint!r}, key_type={self.key_type!r})"


class WorkspaceRow(Base):
    """A named workspace, owned by a user; ``backend`` says how sessions reach it."""

    __tablename__ = "workspaces"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    backend: Mapped[str] = mapped_column(String(32), default="local")
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=_now)

    owner: Mapped[UserRow] = relationship()

    def __repr__(self) -> str:
        return f"WorkspaceRow(name={self.name!r}, backend={self.backend!r})"


class SessionRow(Base):
    """One SSH session; ``ended_at`` is None while it is live. Kept after the user is removed."""

    __tablename__ = "sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    username: Mapped[str] = mapped_column(String(32), index=True)
    workspace: Mapped[str] = mapped_column(String(64))
    client_ip: Mapped[str] = mapped_column(String(64))
    client_port: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(default=_now, index=True)
    ended_at: Mapped[datetime | None] = mapped_column(default=None)
    exit_status: Mapped[int | None] = mapped_column(Integer, default=None)
    bytes_in: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_out: Mapped[int] = mapped_column(BigInteger, default=0)
    recording: Mapped[str | None] = mapped_column(Text, default=None)
    end_reason: Mapped[str] = mapped_column(String(256), default="")
    gateway_id: Mapped[str] = mapped_column(String(128), default="", index=True)
    boot_id: Mapped[str] = mapped_column(String(64), default="")
    kind: Mapped[str] = mapped_column(String(16), default="session")
    fingerprint: Mapped[str | None] = mapped_column(String(64), default=None)

    def __repr__(self) -> str:
        return f"SessionRow(id={self.id!r}, username={self.username!r})"


class GatewayRow(Base):
    """One boot of a gateway process and its last heartbeat. A boot whose ``seen_at`` is older
    than the heartbeat timeout is declared dead by the next live gateway's heartbeat: its
    sessions end (reason ``gateway_lost``) and ``ended_at`` is set, so it never comes back."""

    __tablename__ = "gateways"

    boot_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    gateway_id: Mapped[str] = mapped_column(String(128), index=True)
    started_at: Mapped[datetime] = mapped_column(default=_now)
    seen_at: Mapped[datetime] = mapped_column(default=_now, index=True)
    ended_at: Mapped[datetime | None] = mapped_column(default=None)
    end_reason: Mapped[str] = mapped_column(String(64), default="")
    stale_after: Mapped[float | None] = mapped_column(Float, default=None)
    """The heartbeat timeout this boot declared (seconds): it is dead once silent for longer,
    whatever timeout the gateway that notices runs with. None: rows from before r0007."""

    def __repr__(self) -> str:
        return f"GatewayRow(gateway_id={self.gateway_id!r}, boot_id={self.boot_id!r})"


class BlueprintRow(Base):
    """A workspace blueprint as an administrator wrote it (``document``: the YAML/JSON mapping,
    template chain unresolved); the workspace package validates it on the way in and out."""

    __tablename__ = "blueprints"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    document: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=_now)
    updated_at: Mapped[datetime] = mapped_column(default=_now)

    def __repr__(self) -> str:
        return f"BlueprintRow(name={self.name!r})"


#: 64-bit ids on PostgreSQL; SQLite's INTEGER PRIMARY KEY is already 64-bit (and the rowid).
_AuditId = BigInteger().with_variant(Integer(), "sqlite")


class AuditEventRow(Base):
    """One audited event, append-only, in a hash chain (``stockade.audit`` writes and checks it).

    ``id`` is the row's position in the chain (1, 2, 3, ...: assigned by the writer, never
    reused); ``(stream, stream_seq)`` is the bus message it came from (unique: a redelivery
    never makes a second row). ``hash`` = SHA-256 over ``prev_hash``, ``id`` and the row's
    content digest; ``payload`` is the event's canonical JSON. The indexed columns are copies of
    payload fields, also under the hash, so a search cannot be fooled either.
    """

    __tablename__ = "audit_events"
    __table_args__ = (
        UniqueConstraint("stream", "stream_seq"),
        Index("ix_audit_events_user_id", "user", "id"),
        Index("ix_audit_events_action_id", "action", "id"),
        Index("ix_audit_events_session_id_id", "session_id", "id"),
        Index("ix_audit_events_source_ip_id", "source_ip", "id"),
        Index("ix_audit_events_decision_id", "decision", "id"),
        Index("ix_audit_events_at", "at"),
    )

    id: Mapped[int] = mapped_column(_AuditId, primary_key=True, autoincrement=False)
    stream: Mapped[str] = mapped_column(String(64))
    stream_seq: Mapped[int] = mapped_column(BigInteger)
    subject: Mapped[str] = mapped_column(String(128))
    v: Mapped[int] = mapped_column(Integer)
    """Schema version of the event (``v``)."""
    at: Mapped[datetime] = mapped_column()
    """When the event happened (the event's ``at``)."""
    received_at: Mapped[datetime] = mapped_column()
    """When the bus stored the message."""
    action: Mapped[str] = mapped_column(String(128))
    user: Mapped[str] = mapped_column(String(256))
    decision: Mapped[str | None] = mapped_column(String(8))
    """``allow``, ``deny``, or None for events that decide nothing."""
    source_ip: Mapped[str | None] = mapped_column(String(64))
    session_id: Mapped[str | None] = mapped_column(String(64))
    count: Mapped[int] = mapped_column(Integer, default=1)
    """How many identical decisions this row stands for (authz folding)."""
    payload: Mapped[str] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))

    def __repr__(self) -> str:
        return f"AuditEventRow(id={self.id!r}, action={self.action!r}, user={self.user!r})"

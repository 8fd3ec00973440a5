"""Audit rows: what an event becomes, its canonical form and its hashes (schema version 1).

An event from the bus (any subject of ``STOCKADE_AUTH`` or ``STOCKADE_AUDIT``) becomes one
:class:`AuditRecord`: its payload as canonical JSON plus a few columns copied from it so that
searches are indexed (action, user, decision, source IP, session, fold count).

Hashes (SHA-256, lower-case hex):

- the *content digest* of a row covers every column except ``id``, ``prev_hash`` and ``hash``:
  SHA-256 of the UTF-8 concatenation, for each of ``stream, stream_seq, subject, v, at,
  received_at, action, user, decision, source_ip, session_id, count, payload``, of
  ``f"{len(value)}:{value}"`` (numbers in decimal, times ISO 8601 UTC with microseconds) or
  ``~`` for a null;
- the *chain hash* of row ``n`` is ``sha256(f"{prev_hash}:{n}:{content digest}")`` where
  ``prev_hash`` is row ``n-1``'s chain hash (64 zeros for row 1).
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pydantic_core

from stockade.core import events as ev
from stockade.core.errors import InvalidInput

__all__ = [
    "GENESIS",
    "SCHEMA",
    "AuditRecord",
    "canonical_json",
    "chain_hash",
    "iso",
    "record_from_event",
]

#: The schema name and version of exported audit records (``docs/audit.md``).
SCHEMA = "stockade.audit/1"
#: ``prev_hash`` of the first row.
GENESIS = "0" * 64

_MODELS: dict[str, type[ev.Event]] = {
    model.subject: model
    for model in (
        ev.AuthFailed,
        ev.AuthSucceeded,
        ev.DecisionRecord,
        ev.SessionStarted,
        ev.SessionEnded,
        ev.ShieldBan,
        ev.ShieldUnban,
        ev.CredentialRequest,
        ev.IdentityChanged,
        ev.PolicyReloaded,
        ev.FileTransfer,
        ev.BlueprintChanged,
        ev.RecordingsSwept,
        ev.AuthFailedBatch,
        ev.WorktraceAlert,
        ev.UserBan,
        ev.ServiceCallRejected,
    )
}

#: Column limits (the table's); longer values make the event malformed.
_LIMITS = {"action": 128, "user": 256, "source_ip": 64, "session_id": 64}


def canonical_json(value: Any) -> str:
    """Sorted keys, no whitespace, UTF-8 as is: one text per value."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def iso(when: datetime) -> str:
    """``when`` as ISO 8601 UTC with microseconds (the form hashed)."""
    return when.astimezone(UTC).isoformat(timespec="microseconds")


def chain_hash(prev_hash: str, row_id: int, digest: str) -> str:
    """The chain hash of row ``row_id`` whose content digest is ``digest``."""
    return hashlib.sha256(f"{prev_hash}:{row_id}:{digest}".encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One event as the audit store keeps it (the row without its chain position)."""

    stream: str
    stream_seq: int
    subject: str
    v: int
    at: datetime
    received_at: datetime
    action: str
    user: str
    decision: str | None
    source_ip: str | None
    session_id: str | None
    count: int
    payload: str
    """The event's JSON, as published."""

    def digest(self) -> str:
        """The content digest (see the module docstring)."""
        fields = (
            self.stream,
            str(self.stream_seq),
            self.subject,
            str(self.v),
            iso(self.at),
            iso(self.received_at),
            self.action,
            self.user,
            self.decision,
            self.source_ip,
            self.session_id,
            str(self.count),
            self.payload,
        )
        text = "".join("~" if f is None else f"{len(f)}:{f}" for f in fields)
        return hashlib.sha256(text.encode()).hexdigest()

    @classmethod
    def from_row(cls, row: Any) -> AuditRecord:
        """From a row (mapping or object) of ``audit_events``."""
        get: Callable[[str], Any] = (
            row.__getitem__ if isinstance(row, Mapping) else lambda k: getattr(row, k)
        )
        return cls(
            stream=get("stream"),
            stream_seq=int(get("stream_seq")),
            subject=get("subject"),
            v=int(get("v")),
            at=_aware(get("at")),
            received_at=_aware(get("received_at")),
            action=get("action"),
            user=get("user"),
            decision=get("decision"),
            source_ip=get("source_ip"),
            session_id=get("session_id"),
            count=int(get("count")),
            payload=get("payload"),
        )


def _aware(value: Any) -> datetime:
    if isinstance(value, str):  # SQLite through a raw connection
        value = datetime.fromisoformat(value)
    if not isinstance(value, datetime):
        raise TypeError(f"not a datetime: {value!r}")
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _text(data: Mapping[str, Any], *names: str) -> str | None:
    for name in names:
        value = data.get(name)
        if isinstance(value, str) and value:
            return value
    return None


def _action(subject: str, data: Mapping[str, Any]) -> str:
    if subject == ev.SUBJECT_AUTHZ_DECISION:
        return str(data["action"])
    if subject == ev.SUBJECT_CREDENTIAL_REQUEST:
        return "credential.get"
    if subject == ev.SUBJECT_IDENTITY_CHANGED:
        return f"identity.{data['change']}"
    if subject == ev.SUBJECT_BLUEPRINT_CHANGED:
        return f"blueprint.{data['action']}"
    if subject == ev.SUBJECT_FILE_TRANSFER:
        return f"file.{data['direction']}"
    if subject == ev.SUBJECT_POLICY_RELOADED:
        return "policy.reload"
    if subject == ev.SUBJECT_RECORDINGS_SWEPT:
        return "recording.sweep"
    return subject.removeprefix("stockade.")


def _decision(subject: str, data: Mapping[str, Any]) -> str | None:
    if subject in (ev.SUBJECT_AUTH_FAILED, ev.SUBJECT_AUTH_FAILED_BATCH):
        return "deny"
    if subject == ev.SUBJECT_AUTH_SUCCEEDED:
        return "allow"
    if subject == ev.SUBJECT_POLICY_RELOADED:
        return None
    allow = data.get("allow")
    if isinstance(allow, bool):
        return "allow" if allow else "deny"
    return None


def _source(subject: str, data: Mapping[str, Any]) -> str | None:
    names = (
        ("client_ip", "source_ip", "source")
        if subject.startswith("stockade.shield.")
        else (
            "client_ip",
            "source_ip",
        )
    )
    value = _text(data, *names)
    return None if value is None else _normalized_ip(value)


@functools.lru_cache(maxsize=4096)
def _normalized_ip(value: str) -> str:
    try:  # one spelling per address, so a search by IP finds it
        return str(ipaddress.ip_address(value))
    except ValueError:
        try:
            return str(ipaddress.ip_network(value, strict=False))
        except ValueError:
            return value


def record_from_event(
    stream: str, stream_seq: int, subject: str, data: bytes, received_at: datetime
) -> AuditRecord:
    """The audit record of one bus message; raises :class:`InvalidInput` when it is malformed
    (oversized, not JSON, not an object, invalid for its subject's model, fields too long)."""
    if len(data) > ev.MAX_EVENT_BYTES:
        raise InvalidInput(subject, f"event of {len(data)} bytes exceeds {ev.MAX_EVENT_BYTES}")
    model = _MODELS.get(subject)
    if model is not None:
        model.from_bytes(data)  # validates the shape; the stored payload keeps every field
    try:
        text = data.decode()
        parsed = pydantic_core.from_json(data)  # several times faster than json.loads
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput(subject, "event is not JSON") from exc
    if not isinstance(parsed, dict):
        raise InvalidInput(subject, "event is not a JSON object")
    version = parsed.get("v")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise InvalidInput(f"{subject}: v", "missing or not a positive schema version")
    try:
        at = datetime.fromisoformat(str(parsed.get("at", "")))
    except ValueError as exc:
        raise InvalidInput(f"{subject}: at", "missing or not an ISO 8601 time") from exc
    if at.tzinfo is None:
        raise InvalidInput(f"{subject}: at", "time without a timezone")
    count = parsed.get("count", 1)
    user = _text(parsed, "username", "user", "actor") or ""
    source = _source(subject, parsed)
    if subject == ev.SUBJECT_AUTH_FAILED_BATCH:  # validated above: aligned, non-empty columns
        # one row stands for every failure of the batch; a single source or username is
        # searchable as if the failures had come one by one
        count = len(parsed["times"])
        users, sources = set(parsed["username"]), set(parsed["client_ip"])
        user = users.pop() if len(users) == 1 else ""
        source = _normalized_ip(sources.pop()) if len(sources) == 1 else None
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise InvalidInput(f"{subject}: count", "not a positive integer")
    record = AuditRecord(
        stream=stream,
        stream_seq=stream_seq,
        subject=subject,
        v=version,
        at=at.astimezone(UTC),
        received_at=received_at.astimezone(UTC),
        action=_action(subject, parsed),
        user=user,
        decision=_decision(subject, parsed),
        source_ip=source,
        session_id=_text(parsed, "session_id"),
        count=count,
        payload=text,
    )
    for name, limit in _LIMITS.items():
        value = getattr(record, name)
        if value is not None and len(value) > limit:
            raise InvalidInput(f"{subject}: {name}", f"longer than {limit} characters")
    return record

"""What each event becomes as an audit row, and which events are malformed (dead-lettered)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from stockade.audit import SCHEMA, AuditRecord, record_from_event
from stockade.core import events as ev
from stockade.core.errors import InvalidInput

WHEN = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def _record(event: ev.Event) -> AuditRecord:
    return record_from_event("STOCKADE_AUDIT", 7, event.subject, event.to_bytes(), WHEN)


@pytest.mark.parametrize(
    ("event", "columns"),
    [
        (
            ev.AuthFailed(client_ip="2001:DB8::1", client_port=1, username="alice",
                          method="password", reason="bad_password", gateway_id="g"),
            ("auth.failed", "alice", "deny", "2001:db8::1", None, 1),
        ),
        (
            ev.DecisionRecord(action="ssh.exec", resource={"kind": "workspace", "name": "w"},
                              user="bob", allow=False, reasons=["no"], obligations={}, count=7),
            ("ssh.exec", "bob", "deny", None, None, 7),
        ),
        (
            ev.CredentialRequest(username="carol", session_id="s1", kind="git",
                                 target="github.com", allow=True),
            ("credential.get", "carol", "allow", None, "s1", 1),
        ),
        (
            ev.FileTransfer(session_id="s2", username="dave", direction="download",
                            path="/etc/hosts", size=10, sha256="0" * 64),
            ("file.download", "dave", None, None, "s2", 1),
        ),
        (
            ev.ShieldBan(source="203.0.113.0/24", until=WHEN, strikes=2, reason="r"),
            ("shield.ban", "", None, "203.0.113.0/24", None, 1),
        ),
        (
            ev.IdentityChanged(username="erin", change="roles_changed", roles=["auditor"]),
            ("identity.roles_changed", "erin", None, None, None, 1),
        ),
        (
            ev.PolicyReloaded(source="/etc/stockade/policy", ok=False, error="parse error"),
            ("policy.reload", "", None, None, None, 1),
        ),
        (
            ev.BlueprintChanged(actor="root", name="py", action="delete"),
            ("blueprint.delete", "root", None, None, None, 1),
        ),
    ],
)  # fmt: skip
def test_columns_copied_from_the_event(event: ev.Event, columns: tuple[object, ...]) -> None:
    record = _record(event)
    got = (
        record.action, record.user, record.decision, record.source_ip, record.session_id,
        record.count,
    )  # fmt: skip
    assert got == columns
    assert json.loads(record.payload) == json.loads(event.to_bytes())
    assert record.digest() == _record(event).digest()  # canonical: same event, same digest
    assert SCHEMA == "stockade.audit/1"


def test_unknown_subject_kept_with_its_fields() -> None:
    data = json.dumps(
        {"v": 1, "at": "2026-12-01T09:00:00+00:00", "session_id": "s9", "username": "eve",
         "reason": "revoked"}
    ).encode()  # fmt: skip
    record = record_from_event("STOCKADE_AUDIT", 1, "stockade.session.kill", data, WHEN)
    assert (record.action, record.user, record.session_id) == ("session.kill", "eve", "s9")


@pytest.mark.parametrize(
    ("subject", "data", "field"),
    [
        (ev.SUBJECT_AUTH_FAILED, b"{nope", "stockade.auth.failed: event"),
        (ev.SUBJECT_AUTH_FAILED, b'{"v": 1}', "stockade.auth.failed: client_ip"),
        ("stockade.session.kill", b"[1, 2]", "stockade.session.kill"),
        ("stockade.session.kill", b'{"at": "2026-12-01T00:00:00Z"}', "stockade.session.kill: v"),
        ("stockade.session.kill", b'{"v": 1, "at": "soon"}', "stockade.session.kill: at"),
        ("stockade.session.kill", b'{"v": 1, "at": "2026-12-01"}', "stockade.session.kill: at"),
        ("stockade.session.kill", b'{"v": true, "at": "2026-12-01T00:00:00Z"}',
         "stockade.session.kill: v"),
        ("stockade.session.kill",
         b'{"v": 1, "at": "2026-12-01T00:00:00Z", "session_id": "' + b"s" * 65 + b'"}',
         "stockade.session.kill: session_id"),
        ("stockade.session.kill", b'{"v": 1, "at": "2026-12-01T00:00:00Z", "count": 0}',
         "stockade.session.kill: count"),
        ("stockade.session.kill", b"\xff\xfe", "stockade.session.kill"),
        (ev.SUBJECT_AUTHZ_DECISION, b"x" * (ev.MAX_EVENT_BYTES + 1), ev.SUBJECT_AUTHZ_DECISION),
    ],
)  # fmt: skip
def test_malformed_events_refused_naming_the_field(subject: str, data: bytes, field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        record_from_event("STOCKADE_AUDIT", 1, subject, data, WHEN)
    assert caught.value.field == field


def _failure(ip: str, user: str) -> ev.AuthFailed:
    return ev.AuthFailed(client_ip=ip, client_port=1, username=user, method="password",
                         reason="bad_password", gateway_id="g")  # fmt: skip


def test_a_failure_batch_is_one_denied_row_counting_its_failures() -> None:
    """The gateway batches its failures: the row says deny, counts them, and keeps the source
    and username searchable when the batch has only one of each."""
    one_source = _record(ev.AuthFailedBatch.of([_failure("2001:DB8::7", "root")] * 3))
    assert (one_source.action, one_source.decision, one_source.count) == (
        "auth.failed.batch", "deny", 3
    )  # fmt: skip
    assert (one_source.source_ip, one_source.user) == ("2001:db8::7", "root")
    mixed = _record(ev.AuthFailedBatch.of([_failure("198.51.100.1", "root"),
                                           _failure("198.51.100.2", "admin")]))  # fmt: skip
    assert (mixed.decision, mixed.count, mixed.source_ip, mixed.user) == ("deny", 2, None, "")

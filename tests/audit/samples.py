"""Sample events of every kind (shared by the audit and CLI tests)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from stockade.core import events as ev

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def sample_event(i: int, *, at: datetime | None = None) -> ev.Event:
    """A varied event: auth failures and successes, decisions, sessions, credentials, files."""
    at = at or T0 + timedelta(minutes=i)
    user = ("alice", "bob", "carol")[i % 3]
    ip = f"198.51.100.{i % 7 + 1}"
    kind = i % 6
    if kind == 0:
        return ev.AuthFailed(
            at=at, client_ip=ip, client_port=40000 + i, username=user, method="publickey",
            reason="unknown_key", gateway_id="gw1",
        )  # fmt: skip
    if kind == 1:
        return ev.AuthSucceeded(
            at=at, client_ip=ip, client_port=40000 + i, username=user, method="publickey",
            gateway_id="gw1",
        )  # fmt: skip
    if kind == 2:
        return ev.DecisionRecord(
            at=at, action="ssh.connect", resource={"kind": "workspace", "name": "ws"}, user=user,
            allow=i % 4 != 0, reasons=[] if i % 4 else ["workspace ws is owned by dave"],
            obligations={}, count=1 + i % 3,
        )  # fmt: skip
    if kind == 3:
        return ev.SessionStarted(
            at=at, session_id=f"s-{i}", username=user, workspace="ws", client_ip=ip
        )
    if kind == 4:
        return ev.CredentialRequest(
            at=at, username=user, session_id=f"s-{i - 1}", kind="git", target="github.com",
            allow=True,
        )  # fmt: skip
    return ev.FileTransfer(
        at=at, session_id=f"s-{i - 2}", username=user, direction="upload", path="/tmp/x",
        size=3, sha256="a" * 64,
    )  # fmt: skip


def stream_of(event: ev.Event) -> str:
    return ev.STREAM_AUTH if event.subject.startswith("stockade.auth.") else ev.STREAM_AUDIT

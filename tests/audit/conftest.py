"""A migrated store on each database, and a chain of audit rows written the service's way."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from stockade.audit import AuditRecord, AuditWriter, HeadKey, HeadSigner, record_from_event
from stockade.core import events as ev
from stockade.store import Store

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    migrated = Store(database_url)
    await migrated.migrate()
    try:
        yield migrated
    finally:
        await migrated.close()


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


def records(count: int, start: int = 1) -> list[AuditRecord]:
    out = []
    for i in range(start, start + count):
        event = sample_event(i)
        out.append(
            record_from_event(stream_of(event), i, event.subject, event.to_bytes(), event.at)
        )
    return out


@dataclass
class Chain:
    store: Store
    heads: Path
    key: Path
    signer: HeadSigner
    writer: AuditWriter


async def write_chain(
    store: Store, directory: Path, count: int, *, every: int = 5, unsigned: int = 0
) -> Chain:
    """``count`` signed rows (a head every ``every`` rows), then ``unsigned`` more."""
    key_path = directory / "keys" / "audit_heads.pem"
    heads = directory / "audit" / "heads.jsonl"
    key = HeadKey.load_or_create(key_path)
    signer = HeadSigner(key, heads, publish=None, every_rows=every, every_seconds=3600)
    writer = AuditWriter(store)
    for chunk_start in range(1, count + 1, 7):  # batches that do not line up with heads
        size = min(7, count + 1 - chunk_start)
        signer.add(await writer.append(records(size, chunk_start)))
        if signer.due():
            await signer.sign()
    await signer.sign()
    if unsigned:
        signer.add(await writer.append(records(unsigned, count + 1)))
    return Chain(store, heads, key_path, signer, writer)

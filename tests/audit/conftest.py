"""A migrated store on each database, and a chain of audit rows written the service's way."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from stockade.audit import AuditRecord, AuditWriter, HeadKey, HeadSigner, record_from_event
from stockade.store import Store

from .samples import sample_event, stream_of


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    migrated = Store(database_url)
    await migrated.migrate()
    try:
        yield migrated
    finally:
        await migrated.close()


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

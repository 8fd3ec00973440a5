"""Appending records to the chain: one transaction per batch, deduplicated, then chained.

Only one writer should run per store (the audit service); a second one is still safe: on
PostgreSQL the batch holds an advisory lock, on SQLite ``BEGIN IMMEDIATE`` serializes writers,
and each batch reads the chain head inside its transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from sqlalchemy import Table, insert, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from stockade.core.logging import get_logger
from stockade.store import AuditEventRow, Store

from ._schema import GENESIS, AuditRecord, chain_hash

__all__ = ["AppendedRow", "AuditWriter"]

_log = get_logger("stockade.audit")
#: Arbitrary constant: the PostgreSQL advisory lock held while a batch is chained.
_CHAIN_LOCK = 0x5707_A0D1
_TABLE = cast(Table, AuditEventRow.__table__)
_TABLE_NAME = AuditEventRow.__tablename__
#: The order of the tuples :meth:`AuditWriter.append` builds.
_ROW = (
    "id",
    "stream",
    "stream_seq",
    "subject",
    "v",
    "at",
    "received_at",
    "action",
    "user",
    "decision",
    "source_ip",
    "session_id",
    "count",
    "payload",
    "prev_hash",
    "hash",
)


@dataclass(frozen=True, slots=True)
class AppendedRow:
    """A row as written: its chain position, content digest and chain hash."""

    id: int
    digest: str
    hash: str


class AuditWriter:
    """Appends :class:`AuditRecord` batches to ``audit_events``."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._head: tuple[int, str] | None = None

    async def head(self) -> tuple[int, str]:
        """``(id, chain hash)`` of the newest row; ``(0, GENESIS)`` when empty."""
        async with self._store.transaction(readonly=True) as session:
            row = (
                await session.execute(
                    select(AuditEventRow.id, AuditEventRow.hash)
                    .order_by(AuditEventRow.id.desc())
                    .limit(1)
                )
            ).first()
        return (int(row[0]), str(row[1])) if row else (0, GENESIS)

    async def append(self, records: Sequence[AuditRecord]) -> list[AppendedRow]:
        """Write the records not stored yet (by ``(stream, stream_seq)``) in one transaction,
        chained after the newest row; returns the rows written, in order. Committed when it
        returns."""
        if not records:
            return []
        written: list[AppendedRow] = []
        async with self._store.transaction() as session:
            if self._store.dialect == "postgresql":
                await session.execute(text(f"SELECT pg_advisory_xact_lock({_CHAIN_LOCK})"))
            by_stream: dict[str, set[int]] = {}
            for record in records:
                by_stream.setdefault(record.stream, set()).add(record.stream_seq)
            stored: set[tuple[str, int]] = set()
            for stream, seqs in by_stream.items():
                found = await session.execute(
                    select(AuditEventRow.stream_seq).where(
                        AuditEventRow.stream == stream, AuditEventRow.stream_seq.in_(sorted(seqs))
                    )
                )
                stored.update((stream, int(seq)) for (seq,) in found)
            row = (
                await session.execute(
                    select(AuditEventRow.id, AuditEventRow.hash)
                    .order_by(AuditEventRow.id.desc())
                    .limit(1)
                )
            ).first()
            last_id, last_hash = (int(row[0]), str(row[1])) if row else (0, GENESIS)
            if self._head is not None and self._head != (last_id, last_hash):
                _log.warning(
                    "audit_head_moved",
                    expected_id=self._head[0],
                    found_id=last_id,
                    detail="the newest audit row changed outside this writer; run audit verify",
                )
            rows: list[tuple[object, ...]] = []
            for record in records:
                key = (record.stream, record.stream_seq)
                if key in stored:
                    continue
                stored.add(key)
                digest = record.digest()
                prev_hash = last_hash
                last_id += 1
                last_hash = chain_hash(prev_hash, last_id, digest)
                written.append(AppendedRow(last_id, digest, last_hash))
                rows.append(
                    (
                        last_id,
                        record.stream,
                        record.stream_seq,
                        record.subject,
                        record.v,
                        record.at,
                        record.received_at,
                        record.action,
                        record.user,
                        record.decision,
                        record.source_ip,
                        record.session_id,
                        record.count,
                        record.payload,
                        prev_hash,
                        last_hash,
                    )
                )
            if rows and self._store.dialect == "postgresql":
                await _copy(session, rows)
            elif rows:
                await session.execute(
                    insert(_TABLE), [dict(zip(_ROW, r, strict=True)) for r in rows]
                )
        self._head = (last_id, last_hash)
        return written


async def _copy(session: AsyncSession, rows: list[tuple[object, ...]]) -> None:
    """PostgreSQL: the batch in one COPY on the transaction's own connection (several times
    faster than a multi-row INSERT; the unique constraint still applies)."""
    connection = await session.connection()
    raw = await connection.get_raw_connection()
    driver = raw.driver_connection
    assert driver is not None
    await driver.copy_records_to_table(_TABLE_NAME, records=rows, columns=list(_ROW))

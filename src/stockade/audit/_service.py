"""The audit service: durable consumers of ``STOCKADE_AUTH`` and ``STOCKADE_AUDIT`` writing
every event into the chained store, and the head signer.

::

    service = AuditService(bus=bus, store=store, settings=settings.audit, data_dir=data_dir)
    await service.start()
    ...
    await service.stop()          # writes what is pending, signs a last head

Each consumer acknowledges cumulatively, and only after the batch's transaction committed
(:meth:`stockade.bus.Consumer.before_ack`): a crash at any point loses nothing, and the
redelivered tail is recognised by its stream sequence and not stored twice. A malformed or
oversized event is counted (``stats()["rejected"]``) and dead-lettered; the consumer goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from sqlalchemy import select

from stockade.bus import Bus, Consumer, Delivery, Reject
from stockade.core.errors import InvalidInput
from stockade.core.events import STREAM_AUDIT, STREAM_AUTH, STREAMS
from stockade.core.logging import escape_peer, get_logger
from stockade.core.settings import AuditSettings
from stockade.store import AuditEventRow, Store

from ._heads import HeadKey, HeadSigner, last_head
from ._schema import AuditRecord, record_from_event
from ._writer import AppendedRow, AuditWriter

__all__ = ["AUDITED_STREAMS", "AuditService", "heads_file_for", "key_file_for"]

_log = get_logger("stockade.audit")

#: The streams whose every event the audit store keeps, with their consumers' durable names.
AUDITED_STREAMS = {STREAM_AUTH: "audit-auth", STREAM_AUDIT: "audit"}


def heads_file_for(settings: AuditSettings, data_dir: Path) -> Path:
    """The append-only file of signed heads."""
    return settings.heads_file or (data_dir / "audit" / "heads.jsonl")


def key_file_for(settings: AuditSettings, data_dir: Path) -> Path:
    """The Ed25519 head-signing key (its public half beside it, ``.pub``)."""
    return settings.key_file or (data_dir / "keys" / "audit_heads.pem")


class AuditService:
    """Feeds the audit store from the bus (see the module docstring)."""

    def __init__(
        self,
        *,
        bus: Bus,
        store: Store,
        settings: AuditSettings,
        data_dir: Path,
        poll_interval: float = 1.0,
    ) -> None:
        self._bus = bus
        self._store = store
        self._settings = settings
        self._writer = AuditWriter(store)
        self._lock = asyncio.Lock()
        self._poll = poll_interval
        self.heads_file = heads_file_for(settings, data_dir)
        self.key_file = key_file_for(settings, data_dir)
        self._signer: HeadSigner | None = None
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._pending: dict[str, list[AuditRecord]] = {}
        self._stats = {"stored": 0, "duplicates": 0, "rejected": 0, "heads": 0}

    def __repr__(self) -> str:
        return f"<AuditService {self._store!r}>"

    def stats(self) -> dict[str, int]:
        """Counters: rows stored, redeliveries skipped, events rejected, heads signed."""
        stats = dict(self._stats)
        stats["heads"] = self._signer.heads_signed if self._signer else 0
        return stats

    async def start(self) -> None:
        """Load (or create) the signing key, sign heads for rows a crash left unsigned, then
        start one consumer per audited stream."""
        key = await asyncio.to_thread(HeadKey.load_or_create, self.key_file)
        self._signer = HeadSigner(
            key,
            self.heads_file,
            publish=self._bus.publish,
            every_rows=self._settings.head_every_rows,
            every_seconds=self._settings.head_every_seconds,
        )
        await self._catch_up()
        self._stop.clear()
        for stream, durable in AUDITED_STREAMS.items():
            consumer = self._consumer(stream, durable)
            self._tasks.append(asyncio.create_task(consumer.run(self._stop), name=durable))
        self._tasks.append(asyncio.create_task(self._sign_when_due(), name="audit-heads"))
        _log.info("audit_started", heads=str(self.heads_file), key_id=key.key_id)

    async def stop(self) -> None:
        """Stop consuming (what is unacknowledged is redelivered later), sign a last head."""
        self._stop.set()
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(task, self._poll + 6.0)
        if self._signer is not None and self._signer.pending:
            async with self._lock:
                await self._signer.sign()

    def _consumer(self, stream: str, durable: str) -> Consumer:
        consumer = self._bus.consumer(
            stream=stream,
            durable=durable,
            batch=self._settings.batch,
            cumulative_ack=True,
            resume_at_floor=True,
            linger=0.02,
            poll_interval=self._poll,
        )
        pending = self._pending.setdefault(durable, [])

        async def handle(delivery: Delivery) -> None:
            try:
                record = record_from_event(
                    stream, delivery.stream_seq, delivery.subject, delivery.data, delivery.timestamp
                )
            except InvalidInput as exc:
                self._stats["rejected"] += 1
                raise Reject(f"malformed event: {escape_peer(str(exc), 300)}") from None
            pending.append(record)

        for pattern in STREAMS[stream]:
            consumer.on(pattern)(handle)

        @consumer.before_ack
        async def commit() -> None:
            if pending:
                await self._write(pending)

        return consumer

    async def _write(self, pending: list[AuditRecord]) -> None:
        """Commit ``pending`` (then empty it); raises when the store fails (retried)."""
        assert self._signer is not None
        async with self._lock:
            records = list(pending)
            written = await self._writer.append(records)
            del pending[: len(records)]
            self._stats["stored"] += len(written)
            self._stats["duplicates"] += len(records) - len(written)
            self._signer.add(written)
            if self._signer.due():
                await self._signer.sign()

    async def _sign_when_due(self) -> None:
        assert self._signer is not None
        tick = min(1.0, self._settings.head_every_seconds / 2)
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), tick)
            if self._signer.due():
                async with self._lock:
                    await self._signer.sign()

    async def _catch_up(self) -> None:
        """Rows stored after the newest signed head (a crash between commit and signing)."""
        assert self._signer is not None
        newest = await asyncio.to_thread(last_head, self.heads_file)
        signed = newest.last if newest else 0
        head_id, _ = await self._writer.head()
        if head_id < signed:
            _log.warning(
                "audit_rows_missing",
                signed_through=signed,
                newest_row=head_id,
                detail="signed rows are no longer stored; run stockade audit verify",
            )
            return
        after = signed
        while after < head_id:
            async with self._store.transaction(readonly=True) as session:
                rows = (
                    (
                        await session.execute(
                            select(AuditEventRow)
                            .where(AuditEventRow.id > after)
                            .order_by(AuditEventRow.id)
                            .limit(5000)
                        )
                    )
                    .scalars()
                    .all()
                )
            if not rows:
                break
            self._signer.add(
                [AppendedRow(r.id, AuditRecord.from_row(r).digest(), r.hash) for r in rows]
            )
            after = rows[-1].id
            await self._signer.sign()

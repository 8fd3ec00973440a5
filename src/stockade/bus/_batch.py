"""Failure events in batches: one bus message for up to ``max_items`` failures.

::

    batcher = FailureBatcher(bus, max_items=128, max_delay=0.005)
    batcher.add(AuthFailed(...))      # never waits for the bus
    ...
    await batcher.aclose()            # flushes what is left

A batch goes out when it is full or ``max_delay`` seconds after its first failure, as one
:class:`~stockade.core.events.AuthFailedBatch` published to JetStream with a message id
(``Nats-Msg-Id``), so a publish retried after a lost acknowledgement is stored once. A batch the
bus refuses is retried, in order, up to ``max_pending`` failures; beyond that the oldest are
dropped and counted in :attr:`FailureBatcher.dropped` (a gateway must not grow without bound
while the bus is down).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections import deque

import structlog

from stockade.core.errors import BusUnavailable
from stockade.core.events import MAX_BATCH_FAILURES, AuthFailed, AuthFailedBatch
from stockade.core.tasks import cancel_and_wait

from ._client import Bus

__all__ = ["FailureBatcher"]

_log = structlog.get_logger("stockade.bus.batch")


class FailureBatcher:
    """Collects :class:`AuthFailed` events and publishes them as :class:`AuthFailedBatch`."""

    def __init__(
        self,
        bus: Bus,
        *,
        max_items: int = MAX_BATCH_FAILURES,
        max_delay: float = 0.005,
        max_pending: int = 100_000,
        retry_delay: float = 0.5,
    ) -> None:
        if not 1 <= max_items <= MAX_BATCH_FAILURES:
            raise ValueError(f"max_items must be 1..{MAX_BATCH_FAILURES}")
        self._bus = bus
        self._max_items = max_items
        self._max_delay = max_delay
        self._max_pending = max_pending
        self._retry_delay = retry_delay
        self._current: list[AuthFailed] = []
        self._ready: deque[tuple[str, list[AuthFailed]]] = deque()
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._prefix = secrets.token_hex(6)
        self._count = 0
        self.published = 0
        """Failures stored by the bus so far."""
        self.dropped = 0
        """Failures given up on (the bus refused them while ``max_pending`` were waiting)."""

    def __repr__(self) -> str:
        return f"<FailureBatcher pending={self.pending} published={self.published}>"

    @property
    def pending(self) -> int:
        """Failures not yet stored by the bus."""
        return len(self._current) + sum(len(batch) for _, batch in self._ready)

    def add(self, failure: AuthFailed) -> None:
        """Queue ``failure``; it is published within ``max_delay`` seconds (or sooner)."""
        if self._closed:
            raise BusUnavailable("the failure batcher is closed")
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="stockade-failure-batcher"
            )
        current = self._current
        if current and current[0].gateway_id != failure.gateway_id:
            self._seal()
            current = self._current
        current.append(failure)
        if len(current) >= self._max_items:
            self._seal()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._max_delay, self._seal)

    def _seal(self) -> None:
        """Move the current batch to the ready queue and wake the publisher."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._current:
            return
        self._count += 1
        self._ready.append((f"{self._prefix}-{self._count}", self._current))
        self._current = []
        over = self.pending - self._max_pending
        while over > 0 and len(self._ready) > 1:
            _, oldest = self._ready.popleft()
            self.dropped += len(oldest)
            over -= len(oldest)
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._ready:
                msg_id, batch = self._ready[0]
                event = AuthFailedBatch.of(batch)
                try:
                    await self._bus.publish_bytes(
                        event.subject, event.to_bytes(), headers={"Nats-Msg-Id": msg_id}
                    )
                except BusUnavailable as exc:
                    _log.warning("failure_batch_publish_failed", error=str(exc), size=len(batch))
                    if self._closed:
                        return
                    await asyncio.sleep(self._retry_delay)
                    continue
                if self._ready and self._ready[0][0] == msg_id:
                    self._ready.popleft()
                self.published += len(batch)
            self._drained.set()
            if self._closed:
                return

    async def flush(self, *, seconds: float = 10.0) -> bool:
        """Publish everything queued now; True once the bus stored it all within ``seconds``."""
        self._seal()
        if not self._ready:
            return True
        if self._task is None or self._task.done():
            return False
        self._drained.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drained.wait(), seconds)
        return not self._ready

    async def aclose(self, *, seconds: float = 10.0) -> None:
        """Flush (up to ``seconds``) and stop; failures still unstored are counted dropped."""
        if self._closed:
            return
        await self.flush(seconds=seconds)
        self._closed = True
        self._wake.set()
        if self._task is not None:
            await cancel_and_wait(self._task, what="batch publisher")
            self._task = None
        left = self.pending
        if left:
            self.dropped += left
            _log.warning("failure_batches_dropped", failures=left)
        self._ready.clear()

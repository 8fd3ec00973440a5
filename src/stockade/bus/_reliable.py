"""Events that must arrive: published in order, retried until the bus acknowledges them.

::

    ends = ReliablePublisher(bus)
    await ends.publish(SessionEnded(...))   # queued at once; never raises for a bus outage
    ...
    await ends.aclose()                     # flushes what is left (bounded)

Some events are the only way another service learns something: the broker stops serving a
session's token from memory when ``stockade.session.ended`` arrives, and after a workspace-wide
``SessionKill`` it has nothing else to go on. Published once and dropped on a failure (the
gateway's old way), one lost event left a killed session's token usable for up to the broker's
``liveness_max_age``. Here each event is published to JetStream with a message id
(``Nats-Msg-Id``: a retry after a lost acknowledgement is stored once) and retried, oldest
first, after ``retry_delay`` seconds doubling up to ``max_delay`` (bounded backoff: no spin on a
dead bus, no long wait once it is back), until it is stored. Memory is bounded: past
``max_pending`` waiting events the oldest is dropped, counted in :attr:`dropped` and logged as
an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections import deque

import structlog

from stockade.core.errors import BusUnavailable
from stockade.core.events import Event
from stockade.core.tasks import cancel_and_wait

from ._client import Bus

__all__ = ["ReliablePublisher"]

_log = structlog.get_logger("stockade.bus.reliable")


class ReliablePublisher:
    """Publishes events in order and keeps retrying each until JetStream stores it."""

    def __init__(
        self,
        bus: Bus,
        *,
        ack_timeout: float = 2.0,
        retry_delay: float = 0.05,
        max_delay: float = 2.0,
        max_pending: int = 100_000,
    ) -> None:
        self._bus = bus
        self._ack_timeout = ack_timeout
        self._retry_delay = retry_delay
        self._max_delay = max_delay
        self._max_pending = max_pending
        self._queue: deque[tuple[str, Event]] = deque()
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._prefix = secrets.token_hex(8)
        self._count = 0
        self.published = 0
        """Events stored by the bus."""
        self.retries = 0
        """Attempts the bus refused (each retried later)."""
        self.dropped = 0
        """Events given up on: over ``max_pending``, or still queued at :meth:`aclose`."""

    def __repr__(self) -> str:
        return f"<ReliablePublisher pending={self.pending} published={self.published}>"

    @property
    def pending(self) -> int:
        return len(self._queue)

    async def publish(self, event: Event, *, ack_timeout: float | None = None) -> int:
        """Queue ``event`` (returns at once: the number waiting); raises only once closed."""
        if self._closed:
            raise BusUnavailable("the reliable publisher is closed")
        self._count += 1
        self._queue.append((f"{self._prefix}-{self._count}", event))
        while len(self._queue) > self._max_pending:
            _, lost = self._queue.popleft()
            self.dropped += 1
            _log.error("reliable_event_dropped", subject=lost.subject, pending=self._max_pending)
        self._drained.clear()
        self._wake.set()
        if self._task is None or self._task.done():  # done: a surprise ended it, start again
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="stockade-reliable-publisher"
            )
        return len(self._queue)

    async def _run(self) -> None:
        delay = self._retry_delay
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                msg_id, event = self._queue[0]
                try:
                    await self._bus.publish_bytes(
                        event.subject,
                        event.to_bytes(),
                        headers={"Nats-Msg-Id": msg_id},
                        ack_timeout=self._ack_timeout,
                    )
                except BusUnavailable as exc:
                    self.retries += 1
                    _log.warning(
                        "reliable_publish_retry", subject=event.subject, error=str(exc), delay=delay
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self._max_delay)
                    continue
                except Exception as exc:  # this event can never be sent (it does not serialise):
                    # dropped, not retried (it would hold back every later one) and not the end
                    # of the task (every later one would wait forever)
                    if self._queue and self._queue[0][0] == msg_id:
                        self._queue.popleft()
                    self.dropped += 1
                    _log.error("reliable_event_unsendable", subject=event.subject, error=repr(exc))
                    continue
                delay = self._retry_delay
                if self._queue and self._queue[0][0] == msg_id:
                    self._queue.popleft()
                self.published += 1
            self._drained.set()

    async def flush(self, *, seconds: float = 10.0) -> bool:
        """Wait (up to ``seconds``) until everything queued is stored; True when it is."""
        if not self._queue:
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drained.wait(), seconds)
        return not self._queue

    async def aclose(self, *, seconds: float = 10.0) -> None:
        """Flush (up to ``seconds``) and stop; what is still queued is counted dropped."""
        if self._closed:
            return
        await self.flush(seconds=seconds)
        self._closed = True
        if self._task is not None:
            await cancel_and_wait(self._task, what="reliable publisher")
            self._task = None
        if self._queue:
            self.dropped += len(self._queue)
            _log.error("reliable_events_dropped", events=len(self._queue))
            self._queue.clear()

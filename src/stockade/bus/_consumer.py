"""Durable pull consumers whose handlers are plain functions registered per subject.

::

    consumer = bus.consumer(stream="STOCKADE_AUTH", durable="shield")

    @consumer.on("stockade.auth.failed")
    async def on_failed(delivery: Delivery) -> None:
        ...  # store the effect; return normally and the message is acknowledged

    await consumer.run(stop)

What a handler's outcome tells the consumer (kopf's habit: exceptions are instructions):

- returns normally: the message is acknowledged, *after* the handler returned, so whatever the
  handler stored before returning is durable before the stream forgets the message;
- raises :class:`Retry`: negative acknowledgement, redelivered after ``delay`` seconds;
- raises :class:`Reject`: the message is copied to the dead-letter subject
  ``stockade.deadletter.<durable>`` (headers name the original subject, sequence and reason),
  then acknowledged;
- raises anything else: like :class:`Retry` with a growing delay, until ``max_attempts``
  deliveries, then like :class:`Reject`.

Messages of one consumer are handled one at a time, in stream order.

With ``cumulative_ack=True`` (JetStream ``AckPolicy.ALL``) the consumer takes whatever has
arrived (up to ``batch``) as one chunk, runs the handlers over it, awaits every hook registered
with :meth:`Consumer.before_ack` (a handler may start writes without awaiting them; the hook
awaits them), and then acknowledges the chunk's last message, which acknowledges the whole
chunk. Handlers must be idempotent: after a crash the unacknowledged tail is delivered again.
The rules above hold per message, except that a retry holds up the line (a later cumulative
acknowledgement would cover the retried message): the messages before it are acknowledged, it
and the rest of its chunk are handled again in this process after the delay, up to
``max_attempts``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import TYPE_CHECKING

import nats.js.errors
import structlog
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import api

from stockade.core.errors import StockadeError
from stockade.core.events import SUBJECT_DEAD_LETTER_PREFIX
from stockade.core.logging import escape_peer

from ._errors import MAPPED, mapped

if TYPE_CHECKING:
    from ._client import Bus

__all__ = [
    "AckHook",
    "Consumer",
    "ConsumerState",
    "Delivery",
    "Handler",
    "Reject",
    "Retry",
    "subject_matches",
]

_log = structlog.get_logger("stockade.bus.consumer")  # lazy: honours configure_logging run later


class Retry(StockadeError):
    """Raised by a handler: the failure is temporary; redeliver after ``delay`` seconds."""

    def __init__(self, reason: str, *, delay: float = 1.0) -> None:
        super().__init__(reason)
        self.delay = delay


class Reject(StockadeError):
    """Raised by a handler: the message can never be handled; send it to the dead-letter subject."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message as a handler sees it."""

    subject: str
    data: bytes
    headers: Mapping[str, str]
    stream_seq: int
    """The message's sequence in its stream: unique, stable across redeliveries (dedupe key)."""
    timestamp: datetime
    """When the server stored the message (timezone-aware UTC)."""
    attempt: int
    """1 on first delivery, higher on redeliveries."""


@dataclass(frozen=True, slots=True)
class ConsumerState:
    """Progress of a durable consumer, read from the server."""

    ack_floor: int
    """Every stream sequence up to this one is acknowledged."""
    num_pending: int
    """Messages not yet delivered."""
    num_ack_pending: int
    """Messages delivered and not yet acknowledged."""
    num_redelivered: int


Handler = Callable[[Delivery], Awaitable[None]]
AckHook = Callable[[], Awaitable[None]]


_NO_HEADERS: Mapping[str, str] = MappingProxyType({})


def _delivery(msg: Msg, retries: int = 0) -> Delivery:
    """A :class:`Delivery` from a JetStream message, reading the ack subject's tokens directly
    (``$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<ns>.<pending>``, or
    the 12-token form with domain and account hash)."""
    tokens = (msg.reply or "").split(".")
    if len(tokens) == 9 and tokens[0] == "$JS" and tokens[1] == "ACK":
        return Delivery(
            msg.subject,
            msg.data,
            msg.headers or _NO_HEADERS,
            int(tokens[5]),
            datetime.fromtimestamp(int(tokens[7]) / 1e9, UTC),
            int(tokens[4]) + retries,
        )
    meta = msg.metadata
    return Delivery(
        subject=msg.subject,
        data=msg.data,
        headers=msg.headers or _NO_HEADERS,
        stream_seq=meta.sequence.stream,
        timestamp=meta.timestamp,
        attempt=meta.num_delivered + retries,
    )


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS wildcard match: ``*`` is one token, a trailing ``>`` one or more."""
    pat = pattern.split(".")
    sub = subject.split(".")
    for i, part in enumerate(pat):
        if part == ">":
            return len(sub) > i
        if i >= len(sub) or (part != "*" and part != sub[i]):
            return False
    return len(pat) == len(sub)


class Consumer:
    """A durable pull consumer on ``stream`` dispatching to handlers registered with :meth:`on`.

    The consumer is created (or its subject filter updated) when :meth:`run` starts. Use
    :meth:`run` for the loop, :meth:`poll` to handle at most one batch (tests, tools).
    """

    def __init__(
        self,
        bus: Bus,
        *,
        stream: str,
        durable: str,
        batch: int = 256,
        ack_wait: float = 30.0,
        max_attempts: int = 20,
        retry_delay: float = 1.0,
        poll_interval: float = 1.0,
        cumulative_ack: bool = False,
        resume_at_floor: bool = False,
        linger: float = 0.0,
    ) -> None:
        self._bus = bus
        self.stream = stream
        self.durable = durable
        self._batch = batch
        self._ack_wait = ack_wait
        self._max_attempts = max_attempts
        self._retry_delay = retry_delay
        self._poll = poll_interval
        self.cumulative_ack = cumulative_ack
        self.resume_at_floor = resume_at_floor
        self._linger = linger
        self._handlers: list[tuple[str, Handler]] = []
        self._by_subject: dict[str, Handler | None] = {}
        self._hooks: list[AckHook] = []
        self._sub: Subscription | None = None
        self._inbox: str | None = None
        self._queue: asyncio.Queue[Msg] = asyncio.Queue()
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self.dead_letter_subject = f"{SUBJECT_DEAD_LETTER_PREFIX}.{durable}"

    def __repr__(self) -> str:
        return f"<Consumer {self.stream}/{self.durable}>"

    def on(self, subject: str) -> Callable[[Handler], Handler]:
        """Register the decorated function for ``subject`` (wildcards allowed); returns it as is."""

        def register(handler: Handler) -> Handler:
            self._handlers.append((subject, handler))
            self._by_subject.clear()
            return handler

        return register

    def before_ack(self, hook: AckHook) -> AckHook:
        """Register ``hook`` (a coroutine function without arguments) to be awaited after the
        handlers of a chunk ran and before its cumulative acknowledgement (``cumulative_ack``
        only). A hook that raises is retried after ``retry_delay``; nothing is acknowledged
        until every hook returned."""
        self._hooks.append(hook)
        return hook

    def _handler(self, subject: str) -> Handler | None:
        try:
            return self._by_subject[subject]
        except KeyError:
            found = next((h for s, h in self._handlers if subject_matches(s, subject)), None)
            if len(self._by_subject) < 1024:
                self._by_subject[subject] = found
            return found

    async def _subscription(self) -> str:
        """Create (or update) the durable consumer and the inbox its batches arrive on."""
        if self._inbox is not None:
            return self._inbox
        if not self._handlers:
            raise StockadeError(f"consumer {self.durable} has no handlers registered")
        subjects = sorted({s for s, _ in self._handlers})
        policy = api.AckPolicy.ALL if self.cumulative_ack else api.AckPolicy.EXPLICIT
        config = api.ConsumerConfig(
            durable_name=self.durable,
            name=self.durable,
            ack_policy=policy,
            ack_wait=self._ack_wait,
            deliver_policy=api.DeliverPolicy.ALL,
            max_ack_pending=max(self._batch * 4, 1024),
            filter_subjects=subjects if len(subjects) > 1 else None,
            filter_subject=subjects[0] if len(subjects) == 1 else None,
        )
        nc = self._bus.nc
        queue = self._queue

        async def deliver(msg: Msg) -> None:
            queue.put_nowait(msg)

        inbox = nc.new_inbox()
        with mapped(f"create consumer {self.durable}"):
            await self._create(config)
            self._sub = await nc.subscribe(
                inbox, cb=deliver, pending_msgs_limit=max(65536, self._batch * 8)
            )
        self._inbox = inbox
        return inbox

    async def _create(self, config: api.ConsumerConfig) -> None:
        """Create or update the durable consumer. The server cannot change an existing
        consumer's ack policy: such a consumer is replaced by one that starts after its
        acknowledged floor (what was delivered and not acknowledged is delivered again)."""
        js = self._bus.js
        if self.resume_at_floor and await self._resume_at_floor(config):
            return
        try:
            await js.add_consumer(self.stream, config=config)
            return
        except nats.js.errors.APIError:  # 10012: ack policy can not be updated
            info = await js.consumer_info(self.stream, self.durable)
            if info.config.ack_policy == config.ack_policy:
                raise
        floor = int(info.ack_floor.stream_seq if info.ack_floor else 0)
        _log.warning(
            "consumer_replaced",
            durable=self.durable,
            ack_policy=str(config.ack_policy.value if config.ack_policy else None),
            resume_after=floor,
        )
        await js.delete_consumer(self.stream, self.durable)
        if floor:
            config = dataclasses.replace(
                config,
                deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=floor + 1,
            )
        await js.add_consumer(self.stream, config=config)

    async def _resume_at_floor(self, config: api.ConsumerConfig) -> bool:
        """``resume_at_floor``: when the durable consumer has messages delivered and not
        acknowledged (a previous process died holding them), replace it by one starting right
        after its acknowledged floor. Otherwise, with ``cumulative_ack``, this process's first
        acknowledgement would also acknowledge the dead process's messages before their
        redelivery. Only for a consumer that one process at a time runs. True when replaced."""
        js = self._bus.js
        try:
            info = await js.consumer_info(self.stream, self.durable)
        except nats.js.errors.NotFoundError:
            return False
        if not info.num_ack_pending:
            return False
        floor = int(info.ack_floor.stream_seq if info.ack_floor else 0)
        _log.warning(
            "consumer_resumed_at_floor",
            durable=self.durable,
            unacknowledged=int(info.num_ack_pending),
            resume_after=floor,
        )
        await js.delete_consumer(self.stream, self.durable)
        if floor:
            config = dataclasses.replace(
                config,
                deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=floor + 1,
            )
        await js.add_consumer(self.stream, config=config)
        return True

    async def state(self) -> ConsumerState:
        """The consumer's acknowledged floor and pending counts as the server sees them."""
        with mapped(f"consumer info {self.durable}"):
            info = await self._bus.js.consumer_info(self.stream, self.durable)
        return ConsumerState(
            ack_floor=int(info.ack_floor.stream_seq if info.ack_floor else 0),
            num_pending=int(info.num_pending or 0),
            num_ack_pending=int(info.num_ack_pending or 0),
            num_redelivered=int(info.num_redelivered or 0),
        )

    async def poll(self, wait: float | None = None) -> int:
        """Pull one batch (the server holds the request up to ``wait`` seconds) and handle its
        messages as they arrive; returns how many were handled."""
        inbox = await self._subscription()
        wait = wait or self._poll
        request = json.dumps({"batch": self._batch, "expires": int(wait * 1e9)}).encode()
        with mapped(f"fetch {self.durable}"):
            await self._bus.nc.publish(self._next_subject, request, reply=inbox)
        if self.cumulative_ack:
            return await self._poll_chunks(wait)
        handled = 0
        try:
            async with asyncio.timeout(wait + 5.0):  # the server ends the request by itself
                while handled < self._batch:
                    msg = await self._queue.get()
                    status = msg.headers.get("Status") if msg.headers else None
                    if status == "100":  # idle heartbeat
                        continue
                    if status is not None:  # 404/408/409: this request is over
                        break
                    await self._handle(msg)
                    handled += 1
        except TimeoutError:
            _log.warning("consumer_fetch_timeout", durable=self.durable)
        return handled

    async def _poll_chunks(self, wait: float) -> int:
        """Cumulative mode: handle what has arrived as chunks, one acknowledgement per chunk.
        Only waiting for messages is bounded by the request's time; handling is not."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait + 5.0  # the server ends the request by itself
        queue = self._queue
        handled = 0
        ended = False
        while not ended and handled < self._batch:
            if queue.empty():
                try:
                    async with asyncio.timeout_at(deadline):
                        first = await queue.get()
                except TimeoutError:
                    _log.warning("consumer_fetch_timeout", durable=self.durable)
                    break
                chunk, ended = self._take(first, self._batch - handled)
            else:
                chunk, ended = self._take(queue.get_nowait(), self._batch - handled)
            chunk, ended = await self._fill(chunk, ended, handled)
            if chunk:
                await self._handle_chunk(chunk)
                handled += len(chunk)
        return handled

    async def _fill(self, chunk: list[Msg], ended: bool, handled: int) -> tuple[list[Msg], bool]:
        """``linger``: wait up to that long for more of the request's messages to join a chunk
        that is not full (fewer, larger chunks: one store transaction and one ack each)."""
        if self._linger <= 0 or ended:
            return chunk, ended
        loop = asyncio.get_running_loop()
        until = loop.time() + self._linger
        while not ended and handled + len(chunk) < self._batch:
            try:
                async with asyncio.timeout_at(until):
                    msg = await self._queue.get()
            except TimeoutError:
                break
            more, ended = self._take(msg, self._batch - handled - len(chunk))
            chunk.extend(more)
        return chunk, ended

    def _take(self, first: Msg, limit: int) -> tuple[list[Msg], bool]:
        """``first`` and what else is queued (up to ``limit`` messages), and whether a status
        message ended the pull request."""
        chunk: list[Msg] = []
        queue = self._queue
        msg: Msg | None = first
        while msg is not None:
            headers = msg.headers
            status = headers.get("Status") if headers else None
            if status is None:
                chunk.append(msg)
            elif status != "100":  # 404/408/409: this request is over (100: idle heartbeat)
                return chunk, True
            if len(chunk) >= limit or queue.empty():
                break
            msg = queue.get_nowait()
        return chunk, False

    async def _handle_chunk(self, msgs: list[Msg]) -> None:
        """Handle ``msgs`` in order; acknowledge the handled prefix cumulatively once the hooks
        returned; a message to retry is retried here (see the module docstring)."""
        start = 0
        retries = 0
        for _ in range(len(msgs) * (self._max_attempts + 1)):  # bound: each round ends a try
            failed = -1
            delay = 0.0
            for i in range(start, len(msgs)):
                msg = msgs[i]
                outcome = await self._dispatch(msg, _delivery(msg, retries if i == start else 0))
                if outcome is not None:
                    failed, delay = i, outcome
                    break
            end = len(msgs) if failed < 0 else failed
            if end > start and not await self._commit(msgs[end - 1]):
                return  # not acknowledged: redelivered; hooks keep their unstored effects
            if failed < 0:
                return
            retries = retries + 1 if failed == start else 1
            start = failed
            for msg in msgs[start:]:  # keep them ours while we wait
                with contextlib.suppress(*MAPPED):
                    await msg.in_progress()
            await asyncio.sleep(min(delay, self._ack_wait / 2))

    async def _dispatch(self, msg: Msg, delivery: Delivery) -> float | None:
        """Run the handler (cumulative mode); ``None`` when done with the message (handled or
        dead-lettered), else the delay before it is tried again."""
        handler = self._handler(msg.subject)
        try:
            if handler is None:
                raise Reject(f"no handler for subject {msg.subject}")
            await handler(delivery)
            return None
        except Reject as exc:
            reason = str(exc)
            delay = self._retry_delay
        except Exception as exc:
            detail = str(exc) if isinstance(exc, Retry) else f"{type(exc).__name__}: {exc}"
            if delivery.attempt < self._max_attempts:
                step = self._retry_delay * delivery.attempt
                delay = exc.delay if isinstance(exc, Retry) else step
                _log.warning(
                    "handler_retry",
                    durable=self.durable,
                    seq=delivery.stream_seq,
                    attempt=delivery.attempt,
                    delay=delay,
                    reason=escape_peer(detail),
                )
                return min(delay, 60.0)
            reason = f"gave up after {delivery.attempt}: {detail}"
            delay = self._retry_delay
        if await self._publish_dead_letter(delivery, reason):
            return None
        return delay

    async def _commit(self, last: Msg) -> bool:
        """Await the hooks, then acknowledge ``last`` (and so everything before it); False when
        the hooks kept failing (nothing acknowledged)."""
        for attempt in range(1, self._max_attempts + 1):
            try:
                for hook in self._hooks:
                    await hook()
            except Exception as exc:
                _log.warning(
                    "before_ack_failed",
                    durable=self.durable,
                    attempt=attempt,
                    error=escape_peer(f"{type(exc).__name__}: {exc}"),
                )
                await asyncio.sleep(min(self._retry_delay * attempt, self._ack_wait / 2))
                continue
            try:
                await last.ack()
            except MAPPED as exc:  # redelivered later; handlers are idempotent
                _log.warning("ack_failed", durable=self.durable, error=str(exc))
            return True
        return False

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Handle messages until ``stop`` is set (or the task is cancelled).

        A lost connection is logged and retried; nats-py reconnects underneath.
        """
        stop = stop or asyncio.Event()
        while not stop.is_set():
            try:
                await self.poll()
            except StockadeError as exc:
                if self._bus.closed:
                    return
                _log.warning("consumer_poll_failed", durable=self.durable, error=str(exc))
                await asyncio.sleep(min(self._poll, 1.0))

    async def _handle(self, msg: Msg) -> None:
        delivery = _delivery(msg)
        handler = self._handler(msg.subject)
        try:
            if handler is None:
                raise Reject(f"no handler for subject {msg.subject}")
            await handler(delivery)
        except Reject as exc:
            await self._dead_letter(msg, delivery, str(exc))
            return
        except Retry as exc:
            await self._nak(msg, delivery, str(exc), exc.delay)
            return
        except Exception as exc:
            if delivery.attempt >= self._max_attempts:
                await self._dead_letter(msg, delivery, f"gave up after {delivery.attempt}: {exc}")
            else:
                delay = min(self._retry_delay * delivery.attempt, 60.0)
                await self._nak(msg, delivery, f"{type(exc).__name__}: {exc}", delay)
            return
        try:
            await msg.ack()
        except MAPPED as exc:  # redelivered later; handlers are idempotent
            _log.warning("ack_failed", seq=delivery.stream_seq, error=str(exc))

    async def _nak(self, msg: Msg, delivery: Delivery, reason: str, delay: float) -> None:
        _log.warning(
            "handler_retry",
            durable=self.durable,
            seq=delivery.stream_seq,
            attempt=delivery.attempt,
            delay=delay,
            reason=escape_peer(reason),
        )
        try:
            await msg.nak(delay=delay)
        except MAPPED as exc:
            _log.warning("nak_failed", seq=delivery.stream_seq, error=str(exc))

    async def _dead_letter(self, msg: Msg, delivery: Delivery, reason: str) -> None:
        if not await self._publish_dead_letter(delivery, reason):
            # keep the message: it is redelivered and retried
            await self._nak(msg, delivery, "dead-letter publish failed", self._retry_delay)
            return
        try:
            await msg.ack()
        except MAPPED as exc:
            _log.warning("ack_failed", seq=delivery.stream_seq, error=str(exc))

    async def _publish_dead_letter(self, delivery: Delivery, reason: str) -> bool:
        """Copy the message to the dead-letter subject; False when that failed."""
        _log.warning(
            "handler_dead_letter",
            durable=self.durable,
            seq=delivery.stream_seq,
            subject=delivery.subject,
            reason=escape_peer(reason),
        )
        headers = {
            "Stockade-Subject": delivery.subject,
            "Stockade-Stream-Seq": str(delivery.stream_seq),
            "Stockade-Reason": escape_peer(reason, 512),
        }
        try:
            await self._bus.publish_bytes(self.dead_letter_subject, delivery.data, headers=headers)
        except StockadeError as exc:
            _log.warning("dead_letter_failed", durable=self.durable, error=str(exc))
            return False
        return True

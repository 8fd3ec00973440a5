"""The NATS connection: publish events, create streams, consumers and KV buckets."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import nats
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from stockade.core.errors import BusUnavailable
from stockade.core.events import STREAMS, Event

from ._consumer import Consumer, Delivery
from ._errors import mapped
from ._kv import KeyValueStore, KvWatch

__all__ = ["DEFAULT_STREAM_MAX_AGE", "Bus"]

#: Events are kept this long (seconds) in the streams created by :meth:`Bus.ensure_streams`.
DEFAULT_STREAM_MAX_AGE = 7 * 86400.0

_log = structlog.get_logger("stockade.bus")  # lazy: honours configure_logging run later


async def _log_error(exc: Exception) -> None:
    _log.warning("nats_error", error=str(exc) or type(exc).__name__)


class Bus:
    """A connection to NATS with JetStream. Create with :meth:`connect`; end with :meth:`close`."""

    def __init__(self, nc: Client, *, name: str) -> None:
        """Use :meth:`connect`; this wraps an already connected client."""
        self._nc = nc
        self._js = nc.jetstream()
        self.name = name
        self._watches: list[KvWatch] = []
        self._closed = False

    def __repr__(self) -> str:
        state = (
            "closed" if self._closed else _without_password(self._nc.connected_url.netloc)  # type: ignore[union-attr]
        )
        return f"<Bus {self.name} {state}>"

    @classmethod
    async def connect(
        cls, url: str, *, name: str, connect_timeout: float = 5.0, token: str | None = None
    ) -> Bus:
        """Connect to ``url`` (comma-separated for a cluster) as client ``name``, presenting
        ``token`` when the server requires one (never put it in the URL).

        Raises :class:`BusUnavailable` when no server answers within ``connect_timeout``.
        """
        with mapped(f"connect to {_without_password(url)}"):
            nc = await asyncio.wait_for(
                nats.connect(
                    url,
                    name=name,
                    connect_timeout=connect_timeout,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.5,
                    error_cb=_log_error,
                    token=token,
                ),
                timeout=connect_timeout * 2,
            )
        return cls(nc, name=name)

    @property
    def nc(self) -> Client:
        """The core NATS client (for the bus's own helpers)."""
        return self._nc

    @property
    def js(self) -> JetStreamContext:
        """The JetStream context (for the bus's own helpers; other packages use the methods)."""
        return self._js

    @property
    def closed(self) -> bool:
        return self._closed or self._nc.is_closed

    async def ensure_streams(
        self,
        streams: Mapping[str, Sequence[str]] = STREAMS,
        *,
        max_age: float = DEFAULT_STREAM_MAX_AGE,
    ) -> None:
        """Create each stream (name -> subjects) on file storage, or update it when its subjects
        or retention differ. Idempotent; safe to call from every service at start."""
        for name, subjects in streams.items():
            wanted = sorted(subjects)
            with mapped(f"stream {name}"):
                try:
                    info = await self._js.stream_info(name)
                except nats.js.errors.NotFoundError:
                    await self._js.add_stream(
                        api.StreamConfig(
                            name=name,
                            subjects=wanted,
                            storage=api.StorageType.FILE,
                            max_age=max_age,
                        )
                    )
                    continue
                config = info.config
                if sorted(config.subjects or []) != wanted or config.max_age != max_age:
                    await self._js.update_stream(config.evolve(subjects=wanted, max_age=max_age))

    async def publish(self, event: Event, *, ack_timeout: float = 5.0) -> int:
        """Publish ``event`` to JetStream; returns its stream sequence once stored."""
        return await self.publish_bytes(event.subject, event.to_bytes(), ack_timeout=ack_timeout)

    async def publish_bytes(
        self,
        subject: str,
        data: bytes,
        *,
        headers: dict[str, str] | None = None,
        ack_timeout: float = 5.0,
    ) -> int:
        """Publish raw bytes to JetStream and wait for the store acknowledgement."""
        try:
            with mapped(f"publish {subject}"):
                ack = await self._js.publish(subject, data, headers=headers, timeout=ack_timeout)
        except BusUnavailable as exc:
            if isinstance(exc.__cause__, nats.js.errors.NoStreamResponseError):
                raise BusUnavailable(
                    f"NATS publish {subject}: no stream stores this subject "
                    "(call Bus.ensure_streams at start)"
                ) from exc.__cause__
            raise
        return int(ack.seq)

    async def publish_many(self, events: Iterable[Event], *, ack_timeout: float = 30.0) -> int:
        """Publish many events pipelined (acks awaited together); returns how many were stored.

        ``ack_timeout`` bounds the whole batch (one timer: a per-message timeout costs more than
        the publish itself)."""
        futures: list[asyncio.Future[api.PubAck]] = []
        with mapped("publish batch"):
            async with asyncio.timeout(ack_timeout):
                for event in events:
                    futures.append(await self._js.publish_async(event.subject, event.to_bytes()))
                acks = await asyncio.gather(*futures)
        return len(acks)

    async def publish_nowait(self, event: Event) -> None:
        """Core-NATS publish without a store acknowledgement: for high-rate, loss-tolerant events.

        A stream on the subject still stores it, but a failure is not reported."""
        with mapped(f"publish {event.subject}"):
            await self._nc.publish(event.subject, event.to_bytes())

    async def flush(self, *, seconds: int = 5) -> None:
        """Wait (up to ``seconds``) until the server has seen everything published so far."""
        with mapped("flush"):
            await self._nc.flush(timeout=seconds)

    async def key_value(
        self, bucket: str, *, history: int = 1, marker_ttl: float = 60.0
    ) -> KeyValueStore:
        """The KV bucket ``bucket``, created idempotently (file storage, per-key TTL allowed,
        delete markers kept ``marker_ttl`` seconds so watchers see keys expire)."""
        with mapped(f"key-value bucket {bucket}"):
            try:
                info = await self._js.stream_info(f"KV_{bucket}")
            except nats.js.errors.NotFoundError:
                try:
                    await self._js.create_key_value(
                        api.KeyValueConfig(
                            bucket=bucket,
                            history=history,
                            storage=api.StorageType.FILE,
                            limit_marker_ttl=marker_ttl,
                        )
                    )
                except nats.js.errors.BadRequestError:  # created concurrently by another service
                    await self._js.stream_info(f"KV_{bucket}")
            else:
                config = info.config
                if not config.allow_msg_ttl or config.subject_delete_marker_ttl != marker_ttl:
                    await self._js.update_stream(
                        config.evolve(allow_msg_ttl=True, subject_delete_marker_ttl=marker_ttl)
                    )
        return _TrackedKeyValueStore(self._js, bucket, self._watches)

    async def read_stream(
        self,
        stream: str,
        subject: str | Sequence[str],
        *,
        since: datetime | None = None,
        after_seq: int | None = None,
        until_seq: int,
        batch: int = 1024,
        idle: float = 2.0,
    ) -> AsyncIterator[Delivery]:
        """Yield the messages of ``stream`` on ``subject`` (one or several) stored from ``since``
        (or after the sequence ``after_seq``: no clock involved) up to sequence ``until_seq``,
        in order, without acknowledging anything (an ephemeral consumer).

        Stops at ``until_seq``, or when nothing arrives for ``idle`` seconds."""
        if after_seq is not None:
            config = api.ConsumerConfig(
                deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=after_seq + 1,
                ack_policy=api.AckPolicy.NONE,
                inactive_threshold=30.0,
            )
        elif since is not None:
            config = api.ConsumerConfig(
                deliver_policy=api.DeliverPolicy.BY_START_TIME,
                opt_start_time=since.astimezone(UTC),
                ack_policy=api.AckPolicy.NONE,
                inactive_threshold=30.0,
            )
        else:
            raise ValueError("read_stream needs since or after_seq")
        subjects = [subject] if isinstance(subject, str) else sorted(subject)
        if len(subjects) == 1:
            config.filter_subject = subjects[0]
        else:
            config.filter_subjects = subjects
        with mapped(f"read {stream}"):
            sub = await self._js.pull_subscribe(
                subjects[0] if len(subjects) == 1 else "", stream=stream, config=config
            )
        try:
            while True:
                try:
                    with mapped(f"read {stream}"):
                        msgs = await sub.fetch(batch, timeout=idle)
                except BusUnavailable as exc:
                    if isinstance(exc.__cause__, nats.errors.TimeoutError | TimeoutError):
                        return
                    raise
                for msg in msgs:
                    meta = msg.metadata
                    if meta.sequence.stream > until_seq:
                        return
                    yield Delivery(
                        subject=msg.subject,
                        data=msg.data,
                        headers=msg.headers or {},
                        stream_seq=meta.sequence.stream,
                        timestamp=meta.timestamp,
                        attempt=meta.num_delivered,
                    )
                    if meta.sequence.stream >= until_seq:
                        return
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def last_sequence(self, stream: str, subject: str | None = None) -> int:
        """The sequence of the newest message in ``stream`` (on ``subject``); 0 when none."""
        with mapped(f"stream info {stream}"):
            if subject is None:
                info = await self._js.stream_info(stream)
                return int(info.state.last_seq or 0)
            try:
                raw = await self._js.get_last_msg(stream, subject)
            except nats.js.errors.NotFoundError:
                return 0
        return int(raw.seq or 0)

    @property
    def epoch(self) -> int:
        """The connection's epoch: it changes with every reconnect, and is -1 while disconnected.
        Whoever keeps state fed by :meth:`subscribe` trusts it only while the epoch is the one
        it subscribed in (core subscriptions miss what is published while disconnected)."""
        if self.closed or not self._nc.is_connected:
            return -1
        return int(self._nc.stats.get("reconnects", 0))

    async def subscribe(
        self, subject: str, callback: Callable[[str, bytes], Awaitable[None]]
    ) -> Callable[[], Awaitable[None]]:
        """A core subscription (no replay): ``callback(subject, data)`` for each message on
        ``subject`` (wildcards allowed). Returns the coroutine function that unsubscribes."""

        async def deliver(msg: Msg) -> None:
            try:
                await callback(msg.subject, msg.data)
            except Exception as exc:  # one bad message must not stop the subscription
                _log.error("bus_handler_failed", subject=msg.subject, error=repr(exc))

        with mapped(f"subscribe {subject}"):
            sub = await self._nc.subscribe(subject, cb=deliver)

        async def unsubscribe() -> None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

        return unsubscribe

    def consumer(self, *, stream: str, durable: str, **options: Any) -> Consumer:
        """A durable pull consumer (see :class:`Consumer` for handler rules and ``options``)."""
        return Consumer(self, stream=stream, durable=durable, **options)

    async def close(self, *, drain_timeout: float = 5.0) -> None:
        """Stop watches (ordered consumers first, or the drain stalls), then drain and close."""
        if self._closed:
            return
        self._closed = True
        watches, self._watches[:] = list(self._watches), []
        for watch in watches:
            await watch.stop()
        if self._nc.is_closed:
            return
        try:
            await asyncio.wait_for(self._nc.drain(), drain_timeout)
        except (nats.errors.Error, TimeoutError, OSError) as exc:
            _log.warning("nats_drain_failed", error=str(exc) or type(exc).__name__)
            with contextlib.suppress(nats.errors.Error, OSError):
                await self._nc.close()

    async def __aenter__(self) -> Bus:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()


class _TrackedKeyValueStore(KeyValueStore):
    """A KV store whose watches the bus stops before it drains."""

    def __init__(self, js: JetStreamContext, bucket: str, registry: list[KvWatch]) -> None:
        super().__init__(js, bucket)
        self._registry = registry

    async def watch(self, callback: Any) -> KvWatch:
        watch = await super().watch(callback)
        self._registry.append(watch)
        return watch


_USERINFO = re.compile(r"[^\s/@,]+@")


def _without_password(url: str) -> str:
    """``url`` (or a comma-separated list of them) with every userinfo (``user:password@``, or a
    token as ``token@``) shown as ``[secure]@``: connect errors end up on terminals and in logs."""
    return _USERINFO.sub("[secure]@", url)

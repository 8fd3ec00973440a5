"""JetStream key-value buckets with per-key TTL and watches."""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

import nats.js.errors
import structlog
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext, api

from stockade.core.errors import InvalidInput

from ._errors import mapped

__all__ = ["KeyValueStore", "KvEntry", "KvWatch", "PendingPut", "valid_key"]

_KEY_RE = re.compile(r"\A[-/_=a-zA-Z0-9]+(\.[-/_=a-zA-Z0-9]+)*\Z")
_OP = "KV-Operation"
_log = structlog.get_logger("stockade.bus.kv")  # lazy: honours configure_logging run later


def valid_key(key: str) -> bool:
    """True when ``key`` is a legal KV key (``[-/_=.a-zA-Z0-9]``, no empty dot-separated token)."""
    return bool(_KEY_RE.match(key)) and len(key) <= 1024


@dataclass(frozen=True, slots=True)
class KvEntry:
    """One key's state: ``value`` is ``None`` when ``deleted`` (removed, purged or expired)."""

    key: str
    value: bytes | None
    revision: int
    created: datetime
    deleted: bool


class KvWatch:
    """A running watch; :meth:`stop` ends it. ``ready`` is set once the initial values arrived."""

    def __init__(self, sub: Subscription, ready: asyncio.Event) -> None:
        self._sub = sub
        self.ready = ready

    async def stop(self) -> None:
        """Unsubscribe (ordered consumers must go before the connection drains)."""
        with contextlib.suppress(Exception):
            await self._sub.unsubscribe()


class PendingPut:
    """A put sent without waiting for the server (:meth:`KeyValueStore.put_async`)."""

    __slots__ = ("_future", "_what", "key")

    def __init__(self, key: str, future: asyncio.Future[api.PubAck], what: str) -> None:
        self.key = key
        self._future = future
        self._what = what

    def done(self) -> bool:
        return self._future.done()

    def cancel(self) -> None:
        """Stop waiting for the server's answer (the put may still have been stored)."""
        self._future.cancel()

    async def wait(self) -> int:
        """The new revision once the server has stored the value; raises
        :class:`~stockade.core.errors.BusUnavailable` when it was not stored."""
        with mapped(self._what):
            ack = await asyncio.shield(self._future)
        return int(ack.seq)


class KeyValueStore:
    """A JetStream KV bucket. Keys are validated; values are bytes; ``put`` takes a TTL.

    Obtain one from :meth:`stockade.bus.Bus.key_value`, which creates the bucket idempotently with
    per-message TTLs allowed and delete markers for expired keys, so watchers see expiries.
    """

    def __init__(self, js: JetStreamContext, bucket: str) -> None:
        self._js = js
        self.bucket = bucket
        self._stream = f"KV_{bucket}"
        self._prefix = f"$KV.{bucket}."

    def __repr__(self) -> str:
        return f"<KeyValueStore {self.bucket}>"

    def _subject(self, key: str) -> str:
        if not valid_key(key):
            raise InvalidInput("key", f"{key!r} is not a valid key ([-/_=.a-zA-Z0-9])")
        return self._prefix + key

    async def put(self, key: str, value: bytes, *, ttl: float | None = None) -> int:
        """Store ``value`` under ``key``; with ``ttl`` (seconds, rounded up to >= 1) the key
        expires by itself. Returns the new revision once the server has stored it."""
        subject = self._subject(key)
        headers = None if ttl is None else {"Nats-TTL": str(max(1, math.ceil(ttl)))}
        with mapped(f"put {self.bucket}/{key}"):
            ack = await self._js.publish(subject, value, headers=headers)
        return int(ack.seq)

    async def put_async(self, key: str, value: bytes, *, ttl: float | None = None) -> PendingPut:
        """Like :meth:`put`, without waiting for the server: many puts go out back to back and
        are awaited together (``PendingPut.wait``), one round trip for all."""
        subject = self._subject(key)
        headers = None if ttl is None else {"Nats-TTL": str(max(1, math.ceil(ttl)))}
        what = f"put {self.bucket}/{key}"
        with mapped(what):
            future = await self._js.publish_async(subject, value, headers=headers)
        return PendingPut(key, future, what)

    async def get(self, key: str) -> KvEntry | None:
        """The current entry of ``key``, or ``None`` when absent, deleted or expired."""
        subject = self._subject(key)
        try:
            with mapped(f"get {self.bucket}/{key}"):
                raw = await self._js.get_last_msg(self._stream, subject)
        except Exception as exc:
            if isinstance(exc.__cause__, nats.js.errors.NotFoundError):
                return None
            raise
        op = (raw.headers or {}).get(_OP)
        if op is not None or raw.data is None:
            return None
        return KvEntry(
            key=key,
            value=raw.data,
            revision=int(raw.seq or 0),
            created=raw.time or datetime.fromtimestamp(0),
            deleted=False,
        )

    async def delete(self, key: str) -> None:
        """Remove ``key`` and its history (a purge); watchers see a deleted entry."""
        subject = self._subject(key)
        with mapped(f"delete {self.bucket}/{key}"):
            await self._js.publish(
                subject, b"", headers={_OP: "PURGE", "Nats-Rollup": "sub", "Nats-TTL": "60"}
            )

    async def entries(self, *, wait: float = 5.0) -> list[KvEntry]:
        """Every live entry, read from a short-lived ordered consumer."""
        found: dict[str, KvEntry] = {}
        done = asyncio.Event()

        async def collect(entry: KvEntry | None) -> None:
            if entry is None:
                done.set()
            elif entry.deleted:
                found.pop(entry.key, None)
            else:
                found[entry.key] = entry

        watch = await self.watch(collect)
        try:
            with mapped(f"list {self.bucket}"):
                await asyncio.wait_for(done.wait(), wait)
        finally:
            await watch.stop()
        return sorted(found.values(), key=lambda e: e.key)

    async def watch(self, callback: Callable[[KvEntry | None], Awaitable[None]]) -> KvWatch:
        """Call ``callback`` with every key's current entry, then ``None`` (initial values done),
        then every change (puts, deletes, expiries) as it happens, in order."""
        ready = asyncio.Event()

        async def on_msg(msg: Msg) -> None:
            meta = msg.metadata
            key = msg.subject[len(self._prefix) :]
            op = (msg.headers or {}).get(_OP)
            marker = (msg.headers or {}).get("Nats-Marker-Reason")
            deleted = op is not None or marker is not None
            entry = KvEntry(
                key=key,
                value=None if deleted else msg.data,
                revision=meta.sequence.stream,
                created=meta.timestamp,
                deleted=deleted,
            )
            try:
                await callback(entry)
            except Exception:
                _log.exception("kv_watch_callback_failed", bucket=self.bucket, key=key)
            if not ready.is_set() and meta.num_pending == 0:
                ready.set()
                await callback(None)

        with mapped(f"watch {self.bucket}"):
            sub = await self._js.subscribe(
                self._prefix + ">",
                ordered_consumer=True,
                deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT,
                cb=on_msg,
                stream=self._stream,
            )
            info = await self._js.stream_info(self._stream)
        if info.state.messages == 0 and not ready.is_set():
            ready.set()
            await callback(None)
        return KvWatch(sub, ready)

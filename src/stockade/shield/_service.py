"""The shield service: consumer -> detector -> ban store -> enforcers.

Start-up, in order:

1. the ban store (KV bucket) is opened and its records loaded into the deny-list mirror, and the
   enforcers (nftables, exec) are reconciled with it (:class:`BanSync`);
2. the detector's windows are rebuilt by reading the last ``window`` of ``stockade.auth.failed``
   from the stream; a ban decided there is stored only when its triggering event was never
   acknowledged (the previous run stopped between deciding and storing), and only once;
3. the durable consumer ``shield`` resumes after its last acknowledgement. Every event is
   acknowledged after its effect (a ban, if any) is stored; redeliveries are recognised by their
   stream sequence.

Throughput: the consumer acknowledges cumulatively (one acknowledgement per chunk of whatever
has arrived, up to ``batch``). A ban decided while handling a chunk is mirrored in the deny-list
at once and its KV write is sent without waiting; the consumer's before-ack hook (:meth:`_flush`)
awaits all of the chunk's writes together, and only then is the chunk acknowledged. A write that
was not confirmed is sent again and holds back the acknowledgement until it is stored; a crash
before that leaves the chunk unacknowledged, so it is delivered again and the replay (step 2)
stores the bans it decided.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from stockade.bus import Bus, Consumer, Delivery, PendingPut, Reject
from stockade.core.errors import BusUnavailable, InvalidInput, StockadeError
from stockade.core.events import (
    MAX_BATCH_FAILURES,
    STREAM_AUTH,
    SUBJECT_AUTH_FAILED,
    SUBJECT_AUTH_FAILED_BATCH,
    AuthFailed,
    AuthFailedBatch,
    ShieldBan,
    ShieldUnban,
)
from stockade.core.logging import escape_peer
from stockade.core.settings import ShieldSettings
from stockade.core.tasks import cancel_and_wait

from ._detector import Detector, Failure, Outcome, Rules, Verdict
from ._enforce import BanSync, DenyList, Enforcer, ExecEnforcer
from ._metrics import ShieldMetrics
from ._model import Ban, overlaps_allowlist, parse_source, source_key
from ._nft import Nft, NftablesEnforcer
from ._store import BanStore

__all__ = ["DURABLE", "SEQ_SCALE", "Shield", "build_enforcers", "manual_ban", "manual_unban"]

#: Name of the shield's durable consumer on :data:`STREAM_AUTH`.
DURABLE = "shield"

_log = structlog.get_logger("stockade.shield")  # lazy: honours configure_logging run later

#: Seconds a flush waits for the server to confirm the ban writes of one chunk.
WRITE_TIMEOUT = 10.0
#: A failure's identity (dedupe key, a ban's ``trigger_seq``) is ``stream_seq * SEQ_SCALE +
#: index``: its message's stream sequence and its index in an :class:`AuthFailedBatch` (0 for a
#: single :class:`AuthFailed`), so a redelivered batch is counted once, item by item.
SEQ_SCALE = 256
assert MAX_BATCH_FAILURES <= SEQ_SCALE
_SUBJECTS = (SUBJECT_AUTH_FAILED, SUBJECT_AUTH_FAILED_BATCH)
#: Ban writes awaited once this many are in flight within one chunk (nats-py allows 4000
#: unacknowledged publishes; past that each one waits in a semaphore queue).
_CONFIRM_EVERY = 1024


class _PendingBan:
    """A ban whose KV write was sent (``put``) or could not be sent yet (``put`` is None)."""

    __slots__ = ("at", "ban", "put")

    def __init__(self, ban: Ban, at: float, put: PendingPut | None) -> None:
        self.ban = ban
        self.at = at
        self.put = put


#: The nftables table when ``settings.nft_table`` is unset and no data dir names one (the
#: composition root sets the per-instance name, :attr:`Settings.nft_table`).
DEFAULT_NFT_TABLE = "stockade"


def build_enforcers(
    settings: ShieldSettings, *, ports: Sequence[int], owner: str = "default"
) -> list[Enforcer]:
    """The enforcers named in ``settings.enforcers`` other than the deny-list (which the shield
    always keeps as its mirror of the store). ``owner`` marks the nftables table as this
    instance's (see :class:`NftablesEnforcer`)."""
    enforcers: list[Enforcer] = []
    if "nftables" in settings.enforcers:
        enforcers.append(
            NftablesEnforcer(
                Nft(netns=settings.nft_netns),
                table=settings.nft_table or DEFAULT_NFT_TABLE,
                ports=list(settings.ports) or list(ports),
                owner=owner,
            )
        )
    if "exec" in settings.enforcers:
        enforcers.append(ExecEnforcer(settings.exec_command, timeout=settings.exec_timeout))
    return enforcers


class Shield:
    """Bans brute-force sources from the gateway's failure events.

    ``await shield.start()`` returns once bans are loaded and enforced and the consumer runs;
    ``await shield.stop()`` ends it. :attr:`deny_list` is what an in-process gateway queries
    (``shield.deny_list.is_banned(ip)``); :meth:`metrics_text` is for the admin endpoint.
    """

    def __init__(
        self,
        bus: Bus,
        settings: ShieldSettings,
        *,
        ports: Sequence[int] = (2222,),
        enforcers: Sequence[Enforcer] | None = None,
        owner: str = "default",
        durable: str = DURABLE,
        batch: int = 512,
    ) -> None:
        self.bus = bus
        self.settings = settings
        self.rules = Rules.from_settings(settings)
        self.detector = Detector(self.rules)
        self.deny_list = DenyList()
        self.enforcers = (
            list(enforcers)
            if enforcers is not None
            else build_enforcers(settings, ports=ports, owner=owner)
        )
        self.metrics = ShieldMetrics(active_bans=lambda: len(self.deny_list.active()))
        self.durable = durable
        self._batch = batch
        self._store: BanStore | None = None
        self._sync: BanSync | None = None
        self._consumer: Consumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._ack_floor = 0
        self._pending: list[_PendingBan] = []
        self._ban_log: Any = _log  # bound once at start: a lazy logger binds on every call
        self.replayed = 0

    def __repr__(self) -> str:
        return f"<Shield durable={self.durable} bans={len(self.deny_list)}>"

    @property
    def store(self) -> BanStore:
        if self._store is None:
            raise StockadeError("shield is not started")
        return self._store

    async def start(self) -> None:
        self._ban_log = _log.bind()  # logging is configured by now
        await self.bus.ensure_streams()
        self._store = await BanStore.open(self.bus, strike_memory=self.rules.strike_memory)
        self._sync = await BanSync.start(self.bus, [self.deny_list, *self.enforcers])
        consumer = self.bus.consumer(
            stream=STREAM_AUTH, durable=self.durable, batch=self._batch, cumulative_ack=True
        )
        consumer.on(SUBJECT_AUTH_FAILED)(self._on_failed)
        consumer.on(SUBJECT_AUTH_FAILED_BATCH)(self._on_failed)
        consumer.before_ack(self._flush)
        self._consumer = consumer
        await self._replay(consumer)
        self._stop.clear()
        self._task = asyncio.create_task(consumer.run(self._stop), name=f"shield-{self.durable}")
        _log.info(
            "shield_started",
            bans=len(self.deny_list.active()),
            replayed=self.replayed,
            enforcers=["denylist", *(e.name for e in self.enforcers)],
        )

    async def _replay(self, consumer: Consumer) -> None:
        try:
            self._ack_floor = (await consumer.state()).ack_floor
        except BusUnavailable:
            self._ack_floor = 0  # the consumer does not exist yet: nothing was acknowledged
        last = max([await self.bus.last_sequence(STREAM_AUTH, subject) for subject in _SUBJECTS])
        if last == 0:
            return
        horizon = max(self.rules.window, self.rules.enum_window)
        since = datetime.now(UTC) - timedelta(seconds=horizon)
        async for delivery in self.bus.read_stream(
            STREAM_AUTH, _SUBJECTS, since=since, until_seq=last
        ):
            try:
                failures = self._failures(delivery)
            except InvalidInput:
                continue
            self.replayed += len(failures)
            for failure in failures:
                verdict = self.detector.decide(failure, self.deny_list.lookup)
                if verdict.ban is not None and delivery.stream_seq > self._ack_floor:
                    stored = self.deny_list.lookup(verdict.source)
                    if stored is None or stored.trigger_seq < failure.seq:
                        await self._issue_ban(verdict.ban, delivery)
                        if len(self._pending) >= 1024:
                            await self._flush()
                self.detector.commit(verdict)
        await self._flush()

    def _failures(self, delivery: Delivery) -> list[Failure]:
        """The failures one message carries (raises InvalidInput for a malformed one)."""
        base = delivery.stream_seq * SEQ_SCALE
        stored_at = delivery.timestamp.timestamp()
        if delivery.subject == SUBJECT_AUTH_FAILED_BATCH:
            batch = AuthFailedBatch.from_bytes(delivery.data)
            return [
                Failure(base + index, min(at, stored_at), ip, user, reason)
                for index, (at, ip, user, reason) in enumerate(
                    zip(batch.times, batch.client_ip, batch.username, batch.reason, strict=True)
                )
            ]
        event = AuthFailed.from_bytes(delivery.data)
        return [Failure(base, stored_at, event.client_ip, event.username, event.reason)]

    def _malformed(self, delivery: Delivery, exc: InvalidInput) -> Reject:
        self.metrics.events_consumed += 1
        self.metrics.events_malformed += 1
        _log.warning("event_malformed", seq=delivery.stream_seq, error=escape_peer(str(exc)))
        return Reject(f"malformed: {exc}")

    async def _on_failed(self, delivery: Delivery) -> None:
        """One message: a single failure, or a batch read column by column (the hot path:
        :meth:`Detector.observe` builds nothing for failures that change no ban)."""
        base = delivery.stream_seq * SEQ_SCALE
        stored_at = delivery.timestamp.timestamp()
        rows: Iterator[tuple[float, str, str, str]]
        try:
            if delivery.subject == SUBJECT_AUTH_FAILED_BATCH:
                batch = AuthFailedBatch.from_bytes(delivery.data)
                rows = zip(batch.times, batch.client_ip, batch.username, batch.reason, strict=True)
            else:
                event = AuthFailed.from_bytes(delivery.data)
                rows = iter([(stored_at, event.client_ip, event.username, event.reason)])
        except InvalidInput as exc:
            raise self._malformed(delivery, exc) from exc
        observe = self.detector.observe
        lookup = self.deny_list.lookup
        counted = 0
        for index, (at, ip, user, reason) in enumerate(rows):
            counted += 1
            try:
                outcome = observe(base + index, at if at < stored_at else stored_at, ip, user,
                                  reason, lookup)  # fmt: skip
            except InvalidInput as exc:  # one bad address does not lose the rest of a batch
                if delivery.subject == SUBJECT_AUTH_FAILED:
                    raise self._malformed(delivery, exc) from exc
                self.metrics.events_malformed += 1
                _log.warning("event_malformed", seq=base + index, error=escape_peer(str(exc)))
                continue
            if outcome is Outcome.COUNTED or outcome is Outcome.ALREADY_BANNED:
                continue
            if isinstance(outcome, Verdict):
                assert outcome.ban is not None
                await self._issue_ban(outcome.ban, delivery)
                self.detector.commit(outcome)
            elif outcome is Outcome.ALLOWLISTED:
                self.metrics.allowlisted += 1
        self.metrics.events_consumed += counted

    async def _issue_ban(self, ban: Ban, delivery: Delivery) -> None:
        """Mirror ``ban`` in the deny-list and send its write; :meth:`_flush` awaits it."""
        self.deny_list.put(ban)
        try:
            put: PendingPut | None = await self.store.put_async(ban)
        except BusUnavailable as exc:  # sent again by the flush
            _log.warning("ban_write_failed", source=ban.source, error=str(exc))
            put = None
        self._pending.append(_PendingBan(ban, delivery.timestamp.timestamp(), put))
        if len(self._pending) >= _CONFIRM_EVERY:  # keep nats-py's in-flight window unblocked
            with contextlib.suppress(BusUnavailable):  # unconfirmed ones stay for the hook
                await self._flush()
        self._ban_log.info(
            "source_banned",
            source=ban.source,
            strikes=ban.strikes,
            seconds=round(ban.until - ban.banned_at),
            reason=ban.reason,
        )
        audit = ShieldBan(
            source=ban.source,
            until=datetime.fromtimestamp(ban.until, UTC),
            strikes=ban.strikes,
            reason=ban.reason,
        )
        try:
            await self.bus.publish_nowait(audit)
        except BusUnavailable as exc:
            _log.warning("audit_publish_failed", error=str(exc))

    async def _flush(self) -> None:
        """Wait until every ban sent since the last flush is stored (the consumer's before-ack
        hook). Writes not confirmed are sent again and :class:`BusUnavailable` is raised: the
        consumer calls the hook again before it acknowledges anything."""
        pending = self._pending
        if not pending:
            return
        unconfirmed: list[_PendingBan] = []
        done = 0
        try:
            async with asyncio.timeout(WRITE_TIMEOUT):
                for item in pending:
                    if item.put is None:
                        unconfirmed.append(item)
                    else:
                        try:
                            await item.put.wait()
                        except BusUnavailable:
                            unconfirmed.append(item)
                        else:
                            self.metrics.bans_issued += 1
                            self.metrics.observe_latency(time.time() - item.at)
                    done += 1
        except TimeoutError:
            for item in pending[done:]:
                if item.put is not None:
                    item.put.cancel()
                unconfirmed.append(item)
        self._pending = unconfirmed
        if not unconfirmed:
            return
        for item in unconfirmed:  # idempotent: the same record again
            try:
                item.put = await self.store.put_async(item.ban)
            except BusUnavailable:
                item.put = None
        raise BusUnavailable(f"{len(unconfirmed)} ban writes not confirmed; sent again")

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, 10)
            except TimeoutError:
                await cancel_and_wait(self._task, what="shield consumer")
            self._task = None
        if self._sync is not None:
            await self._sync.stop()
            self._sync = None

    async def wait_idle(self, *, seconds: float = 30.0) -> bool:
        """Wait until the consumer has nothing pending (tests, benchmarks); False on timeout."""
        if self._consumer is None:
            return False
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            state = await self._consumer.state()
            if state.num_pending == 0 and state.num_ack_pending == 0:
                return True
            await asyncio.sleep(0.05)
        return False

    def metrics_text(self) -> str:
        """Prometheus text exposition of the shield's metrics."""
        return self.metrics.render()

    async def status(self) -> dict[str, Any]:
        """A summary for ``stockade shield status`` and the admin API."""
        state = await self._consumer.state() if self._consumer is not None else None
        return {
            "active_bans": len(self.deny_list.active()),
            "records": len(self.deny_list),
            "events_consumed": self.metrics.events_consumed,
            "events_malformed": self.metrics.events_malformed,
            "pending": None if state is None else state.num_pending,
            "enforcers": {
                "denylist": "ok",
                **{e.name: getattr(e, "problem", None) or "ok" for e in self.enforcers},
            },
        }


async def manual_ban(
    store: BanStore,
    settings: ShieldSettings,
    source: str,
    *,
    duration: float,
    reason: str,
    bus: Bus | None = None,
) -> Ban:
    """Ban ``source`` (address or CIDR, as typed) for ``duration`` seconds.

    Refuses (:class:`InvalidInput`) a source that overlaps the allowlist. The strike count goes on
    from the source's remembered record.
    """
    network = parse_source(source)
    allowed = overlaps_allowlist(network, settings.allowlist)
    if allowed is not None:
        raise InvalidInput("source", f"{source} is allowlisted ({allowed}); refusing to ban it")
    now = time.time()
    key = source_key(network)
    current = await store.get(key)
    memory = settings.strike_memory.total_seconds()
    strikes = current.strikes + 1 if current and current.until + memory > now else 1
    ban = Ban(
        source=key,
        until=now + duration,
        strikes=strikes,
        reason=reason,
        banned_at=now,
        trigger_seq=current.trigger_seq if current else 0,
    )
    await store.put(ban, now=now)
    if bus is not None:
        await bus.publish(
            ShieldBan(
                source=key,
                until=datetime.fromtimestamp(ban.until, UTC),
                strikes=strikes,
                reason=reason,
            )
        )
    return ban


async def manual_unban(
    store: BanStore, source: str, *, reason: str = "manual", bus: Bus | None = None
) -> bool:
    """Lift ``source``'s ban and forget its strikes; False when it had no record."""
    key = source_key(parse_source(source))
    removed = await store.remove(key)
    if removed and bus is not None:
        await bus.publish(ShieldUnban(source=key, reason=reason))
    return removed

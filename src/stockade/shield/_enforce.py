"""Enforcers: one interface, several at once, kept in sync with the ban store by a KV watch.

::

    class Enforcer(Protocol):
        name: str
        async def reconcile(self, bans, now): ...   # the full set, at start
        async def apply(self, ban, now): ...        # a ban was stored (new, escalated, extended)
        async def remove(self, source): ...         # a record was deleted (unban) or expired

:class:`BanSync` watches the store and drives any number of enforcers; the gateway runs one
with a :class:`DenyList`, the shield one with nftables and the exec hook.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Sequence
from typing import Protocol

import structlog

from stockade.bus import Bus, KvEntry, KvWatch
from stockade.core.errors import StockadeError

from ._model import Ban, Network
from ._store import BUCKET, source_of_key

__all__ = ["BanSync", "DenyList", "Enforcer", "ExecEnforcer"]

_log = structlog.get_logger("stockade.shield.enforce")  # lazy: honours configure_logging run later


class Enforcer(Protocol):
    """Something that keeps banned sources out. Methods must be idempotent and must not raise
    for a failure of their own backend: they log it and keep going."""

    name: str

    async def reconcile(self, bans: Sequence[Ban], now: float) -> None:
        """Make the enforced set exactly ``bans`` (the active ones)."""

    async def apply(self, ban: Ban, now: float) -> None:
        """Enforce ``ban`` for its remaining time (replacing an older ban of the same source)."""

    async def remove(self, source: str) -> None:
        """Stop enforcing any ban of ``source``."""


class DenyList:
    """The gateway's deny-list: :meth:`is_banned` answers in O(1) at TCP accept.

    Also a mirror of the ban store (:meth:`lookup`) that the shield's detector reads.
    """

    name = "denylist"

    def __init__(self) -> None:
        self._bans: dict[str, Ban] = {}
        # (ip version, prefix length) -> network address as int -> until
        self._index: dict[tuple[int, int], dict[int, float]] = {}
        self._prefixes: dict[int, tuple[int, ...]] = {4: (), 6: ()}

    def __len__(self) -> int:
        return len(self._bans)

    def is_banned(self, ip: str, now: float | None = None) -> bool:
        """True when ``ip`` lies in a source whose ban is in force. Unparsable input: False."""
        try:
            address = ipaddress.ip_address(ip.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        prefixes = self._prefixes[address.version]
        if not prefixes:
            return False
        now = time.time() if now is None else now
        value = int(address)
        bits = address.max_prefixlen
        for prefix in prefixes:
            until = self._index[(address.version, prefix)].get(value >> (bits - prefix))
            if until is not None and until > now:
                return True
        return False

    def lookup(self, source: str) -> Ban | None:
        """The stored record of ``source`` (canonical key), active or only remembering strikes."""
        return self._bans.get(source)

    def active(self, now: float | None = None) -> list[Ban]:
        now = time.time() if now is None else now
        return sorted((b for b in self._bans.values() if b.active(now)), key=lambda b: b.source)

    def records(self) -> list[Ban]:
        return sorted(self._bans.values(), key=lambda b: b.source)

    def _slot(self, network: Network) -> tuple[tuple[int, int], int]:
        return (network.version, network.prefixlen), int(network.network_address) >> (
            network.max_prefixlen - network.prefixlen
        )

    def _reindex(self) -> None:
        """Recompute the prefix lengths to look up (only when one appears or disappears)."""
        self._prefixes = {
            v: tuple(sorted({p for (ver, p), m in self._index.items() if ver == v and m}))
            for v in (4, 6)
        }

    async def reconcile(self, bans: Sequence[Ban], now: float) -> None:
        self._bans.clear()
        self._index.clear()
        for ban in bans:
            self.put(ban)
        self._reindex()

    async def apply(self, ban: Ban, now: float) -> None:
        self.put(ban)

    async def remove(self, source: str) -> None:
        self.discard(source)

    def put(self, ban: Ban) -> None:
        """Synchronous :meth:`apply` (the shield mirrors its own writes at once)."""
        old = self._bans.get(ban.source)
        if old is not None and (old == ban or old.trigger_seq > ban.trigger_seq > 0):
            return  # the same record again (the shield's own write, echoed by the watch)
        self._bans[ban.source] = ban
        slot, key = self._slot(ban.network)
        index = self._index.get(slot)
        if index is None:
            index = self._index[slot] = {}
        fresh = not index
        index[key] = ban.until
        if fresh:
            self._reindex()

    def discard(self, source: str) -> None:
        ban = self._bans.pop(source, None)
        if ban is not None:
            slot, key = self._slot(ban.network)
            index = self._index.get(slot, {})
            index.pop(key, None)
            if not index:
                self._reindex()


class ExecEnforcer:
    """Runs a configured command per ban and unban (cloud firewalls, ticketing, ...).

    ``{action}`` (``ban``/``unban``), ``{source}``, ``{seconds}`` and ``{reason}`` are substituted
    in each argument; no shell is involved. Runs are serialized; a failure is logged.
    """

    name = "exec"

    def __init__(self, command: Sequence[str], *, timeout: float = 10.0) -> None:
        if not command:
            raise StockadeError("exec enforcer: empty command")
        self._command = list(command)
        self._timeout = timeout
        self.failures = 0

    async def _run(self, action: str, source: str, seconds: int, reason: str) -> None:
        values = {"action": action, "source": source, "seconds": str(seconds), "reason": reason}
        argv = [arg.format_map(values) for arg in self._command]
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            self.failures += 1
            _log.error("exec_hook_failed", command=argv[0], error=str(exc))
            return
        try:
            _, err = await asyncio.wait_for(proc.communicate(), self._timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            self.failures += 1
            _log.error("exec_hook_timeout", command=argv[0], source=source)
            return
        if proc.returncode != 0:
            self.failures += 1
            _log.error(
                "exec_hook_failed",
                command=argv[0],
                status=proc.returncode,
                stderr=err.decode(errors="replace")[:300],
            )

    async def reconcile(self, bans: Sequence[Ban], now: float) -> None:
        for ban in bans:
            await self.apply(ban, now)

    async def apply(self, ban: Ban, now: float) -> None:
        seconds = int(ban.remaining(now) + 0.999)
        if seconds > 0:
            await self._run("ban", ban.source, seconds, ban.reason)

    async def remove(self, source: str) -> None:
        await self._run("unban", source, 0, "")


class BanSync:
    """Watches the ban store and keeps ``enforcers`` in sync with it.

    ``await BanSync.start(bus, enforcers)`` returns once the initial records were loaded and
    reconciled; after that every stored ban, deletion and TTL expiry reaches the enforcers.
    """

    def __init__(self, enforcers: Sequence[Enforcer]) -> None:
        self.enforcers = list(enforcers)
        self._initial: dict[str, Ban] = {}
        self._ready = asyncio.Event()
        self._watch: KvWatch | None = None
        self.applied = 0

    @classmethod
    async def start(cls, bus: Bus, enforcers: Sequence[Enforcer], *, wait: float = 10.0) -> BanSync:
        sync = cls(enforcers)
        kv = await bus.key_value(BUCKET)
        sync._watch = await kv.watch(sync._on_entry)
        try:
            await asyncio.wait_for(sync._ready.wait(), wait)
        except TimeoutError:
            await sync.stop()
            raise StockadeError(f"ban store did not load within {wait}s") from None
        return sync

    async def stop(self, *, drain: float = 10.0) -> None:
        """Stop watching; then give enforcers that queue their work (nftables) up to ``drain``
        seconds to finish it."""
        if self._watch is not None:
            await self._watch.stop()
            self._watch = None
        for enforcer in self.enforcers:
            pending = getattr(enforcer, "drain", None)
            if pending is None:
                continue
            try:
                await asyncio.wait_for(pending(), drain)
            except TimeoutError:
                _log.warning("enforcer_drain_timeout", enforcer=enforcer.name)

    async def _on_entry(self, entry: KvEntry | None) -> None:
        now = time.time()
        if entry is None:
            bans = [b for b in self._initial.values() if b.active(now)]
            mirrors = [e for e in self.enforcers if isinstance(e, DenyList)]
            for mirror in mirrors:  # the mirror keeps strike records too
                await mirror.reconcile(list(self._initial.values()), now)
            for enforcer in self.enforcers:
                if enforcer not in mirrors:
                    await enforcer.reconcile(bans, now)
            self._initial.clear()
            self._ready.set()
            return
        source = source_of_key(entry.key)
        ban = None
        if not entry.deleted and entry.value is not None:
            try:
                ban = Ban.from_bytes(entry.value)
            except StockadeError as exc:
                _log.warning("ban_record_malformed", key=entry.key, error=str(exc))
                return
        if not self._ready.is_set():
            if ban is None:
                self._initial.pop(source, None)
            else:
                self._initial[ban.source] = ban
            return
        for enforcer in self.enforcers:
            if ban is None:
                await enforcer.remove(source)
            elif ban.active(now) or isinstance(enforcer, DenyList):
                await enforcer.apply(ban, now)
        self.applied += 1

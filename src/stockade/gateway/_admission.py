"""Pre-authentication limits with OpenSSH's semantics: MaxStartups, PerSourceMaxStartups,
PerSourceNetBlockSize and PerSourcePenalties (``sshd_config(5)``, OpenSSH 9.8 and later).

Pure bookkeeping: no I/O, the clock and the random source are injected. The accept loop calls,
for each TCP connection, before any SSH byte:

1. :meth:`PreAuthLimits.admit` -> :class:`Verdict`. Anything but ``ADMITTED`` means: close the
   socket now (``verdict.reason`` is the failure event's reason). ``ADMITTED`` counts the
   connection as *unauthenticated*.
2. :meth:`PreAuthLimits.authenticated` once, when authentication succeeds: the connection stops
   counting against the startup limits.
3. :meth:`PreAuthLimits.closed` once, when the connection ends, with its :class:`Outcome`.
   ``AUTHENTICATED`` for a connection that went through step 2; otherwise why it ended
   unauthenticated, which may add penalty time to its source block. ``closed`` returns the
   :class:`Penalty` when that block's penalty has just become enforced (publish it to the shield
   as reason ``penalized``), else ``None``.

Semantics (as sshd's):

- *MaxStartups* ``start:rate:full`` over every unauthenticated connection: below ``start`` all are
  admitted; from ``start`` a new one is refused with probability ``rate`` % rising linearly to
  100 % at ``full``; at ``full`` all are refused.
- *PerSourceMaxStartups*: unauthenticated connections per source *block* (the address masked to
  ``per_source_net_block_size``; IPv4-mapped IPv6 addresses count as IPv4).
- *PerSourcePenalties*: a connection ending with ``crash``, ``authfail`` (one penalty per
  connection, however many failed attempts it made), ``noauth`` or ``grace_exceeded`` adds that
  many seconds to its block's penalty (capped at ``penalty_max`` from now). Once more than
  ``penalty_min`` seconds are outstanding the penalty is *active*: new connections from the block
  are refused until it expires. Connections already open are not affected. The table holds at
  most ``penalty_max_sources4``/``6`` blocks; when full, ``permissive`` forgets the entries that
  expire soonest, ``deny-all`` refuses every non-exempt source of that family until one expires.
- ``penalty_exempt`` addresses are never penalised nor refused for penalties.
"""

from __future__ import annotations

import heapq
import ipaddress
import itertools
import random
import time
from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from enum import Enum
from typing import TypeVar

from stockade.core.settings import PreAuthSettings

__all__ = ["Outcome", "Penalty", "PreAuthLimits", "Verdict", "source_block"]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_SYSTEM_RANDOM = random.SystemRandom()
_K = TypeVar("_K", bound=Hashable)


class Verdict(Enum):
    """What :meth:`PreAuthLimits.admit` decided; every refusal happens before key exchange."""

    ADMITTED = "admitted"
    """Counted as an unauthenticated connection; go on with the SSH handshake."""
    FULL = "max_startups"
    """``full`` unauthenticated connections are open: every new one is refused."""
    EARLY_DROP = "max_startups_early_drop"
    """Between ``start`` and ``full``: refused by the random early drop."""
    SOURCE_LIMIT = "per_source_max_startups"
    """The source block has ``per_source_max_startups`` unauthenticated connections open."""
    PENALIZED = "penalized"
    """The source block has an active penalty."""
    PENALTY_TABLE_FULL = "penalty_table_full"
    """The penalty table of this address family is full and its overflow mode is ``deny-all``."""

    @property
    def reason(self) -> str:
        """The reason string of the ``stockade.auth.failed`` event for this refusal."""
        return self.value


class Outcome(Enum):
    """How a connection admitted by :meth:`PreAuthLimits.admit` ended."""

    AUTHENTICATED = "authenticated"
    """It authenticated (and :meth:`PreAuthLimits.authenticated` was called). No penalty."""
    NOAUTH = "noauth"
    """It ended unauthenticated without a failed attempt (scanners, ``ssh-keyscan``, a client
    that gave up at the host-key prompt; bare public-key queries are no failed attempt)."""
    AUTHFAIL = "authfail"
    """It ended unauthenticated after at least one rejected signature or password."""
    CRASH = "crash"
    """The peer's bytes broke the protocol parser (an unexpected error before authentication)."""
    GRACE_EXCEEDED = "grace_exceeded"
    """It was closed for not authenticating in time (handshake or login timeout)."""


@dataclass(frozen=True)
class Penalty:
    """A source block whose penalty has just become enforced."""

    source: str
    """The block, e.g. ``203.0.113.7/32`` or ``2001:db8:0:1::/64``."""
    ip: str
    """The address whose connection tipped the penalty over ``penalty_min``."""
    outcome: Outcome
    """How that connection ended."""
    seconds: float
    """Seconds the block stays refused from now (unless more penalties extend it)."""


@dataclass
class _Entry:
    expiry: float
    outcome: Outcome
    active: bool
    seq: int = field(default=0)


def _address(ip: str) -> Address:
    """The peer address as the limits count it (IPv4-mapped IPv6 as IPv4, no scope id)."""
    address = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def source_block(ip: str, *, ipv4_prefix: int = 32, ipv6_prefix: int = 64) -> str:
    """The block ``ip`` counts in, as a CIDR string (``::ffff:10.0.0.1`` -> ``10.0.0.1/32``).

    Raises :class:`ValueError` for a string that is not an IP address.
    """
    return str(_block(_address(ip), ipv4_prefix, ipv6_prefix))


def _block(address: Address, ipv4_prefix: int, ipv6_prefix: int) -> Network:
    prefix = ipv4_prefix if address.version == 4 else ipv6_prefix
    return ipaddress.ip_network(f"{address}/{prefix}", strict=False)


class _PenaltyTable:
    """Penalties of one address family: a dict by block plus a heap by expiry (lazy deletes)."""

    def __init__(self, *, max_sources: int, deny_all: bool) -> None:
        self.max_sources = max_sources
        self.deny_all = deny_all
        self.entries: dict[Network, _Entry] = {}
        self._heap: list[tuple[float, int, Network]] = []
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def full(self) -> bool:
        return len(self.entries) >= self.max_sources

    def _push(self, block: Network, entry: _Entry) -> None:
        entry.seq = next(self._seq)
        heapq.heappush(self._heap, (entry.expiry, entry.seq, block))
        if len(self._heap) > 2 * len(self.entries) + 64:  # drop stale heap items
            self._heap = [(e.expiry, e.seq, b) for b, e in self.entries.items()]
            heapq.heapify(self._heap)

    def _pop_soonest(self) -> None:
        while self._heap:
            _, seq, block = heapq.heappop(self._heap)
            entry = self.entries.get(block)
            if entry is not None and entry.seq == seq:
                del self.entries[block]
                return

    def expire(self, now: float) -> None:
        while self._heap and self._heap[0][0] < now:
            _, seq, block = heapq.heappop(self._heap)
            entry = self.entries.get(block)
            if entry is not None and entry.seq == seq:
                del self.entries[block]

    def add(
        self, block: Network, seconds: float, outcome: Outcome, now: float, *, lo: float, hi: float
    ) -> _Entry | None:
        """Adds ``seconds``; returns the entry when it has just become active."""
        entry = self.entries.get(block)
        if entry is None:
            if self.full and self.deny_all:
                return None  # nowhere to put it; admit() refuses everyone meanwhile
            entry = _Entry(expiry=now + min(seconds, hi), outcome=outcome, active=False)
            self.entries[block] = entry
            self._push(block, entry)
            while len(self.entries) > self.max_sources:  # permissive: forget the soonest
                self._pop_soonest()
            if block not in self.entries:
                return None
        else:
            entry.expiry = min(entry.expiry + seconds, now + hi)
            entry.outcome = outcome
            self._push(block, entry)
        if not entry.active and entry.expiry - now > lo:
            entry.active = True
            return entry
        return None


class PreAuthLimits:
    """Startup limits and per-source penalties for one listener (see the module docstring).

    ``clock`` returns monotonic seconds; ``rng`` returns floats in ``[0, 1)`` and decides the
    random early drop (default: the system's CSPRNG, so a client cannot predict it).
    Misuse (``authenticated``/``closed`` without a matching ``admit``) raises :class:`ValueError`.
    """

    def __init__(
        self,
        *,
        settings: PreAuthSettings,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = _SYSTEM_RANDOM.random,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._rng = rng
        self._v4_prefix, self._v6_prefix = settings.per_source_net_block_size
        overflow6 = settings.penalty_overflow6 or settings.penalty_overflow
        self._tables = {
            4: _PenaltyTable(
                max_sources=settings.penalty_max_sources4,
                deny_all=settings.penalty_overflow == "deny-all",
            ),
            6: _PenaltyTable(
                max_sources=settings.penalty_max_sources6, deny_all=overflow6 == "deny-all"
            ),
        }
        self._exempt = tuple(settings.penalty_exempt)
        self._unauth_total = 0
        self._unauth_by_block: Counter[Network] = Counter()
        self._unauth_by_address: Counter[Address] = Counter()
        self._authed_by_address: Counter[Address] = Counter()

    # -- introspection --------------------------------------------------------------------

    @property
    def unauthenticated(self) -> int:
        """Connections admitted and neither authenticated nor closed yet."""
        return self._unauth_total

    def unauthenticated_from(self, ip: str) -> int:
        """Unauthenticated connections counted against ``ip``'s block."""
        return self._unauth_by_block[self._block_of(_address(ip))]

    def tracked(self, version: int) -> int:
        """Blocks of IP ``version`` (4 or 6) in the penalty table, active or not."""
        table = self._tables[version]
        table.expire(self._clock())
        return len(table)

    def drop_probability(self, unauthenticated: int) -> float:
        """Chance that a new connection is refused while ``unauthenticated`` are open."""
        start, rate, full = self.settings.max_startups
        if unauthenticated < start:
            return 0.0
        if unauthenticated >= full:
            return 1.0
        return (rate + (100 - rate) * (unauthenticated - start) / (full - start)) / 100

    def penalized(self, ip: str) -> float:
        """Seconds ``ip``'s block stays refused by its active penalty (0.0 if none)."""
        address = _address(ip)
        if not self.settings.penalties or self._is_exempt(address):
            return 0.0
        now = self._clock()
        table = self._tables[address.version]
        table.expire(now)
        entry = table.entries.get(self._block_of(address))
        if entry is None or not entry.active:
            return 0.0
        return max(0.0, entry.expiry - now)

    # -- the three calls per connection ---------------------------------------------------

    def admit(self, ip: str) -> Verdict:
        """Decides on a new connection from ``ip`` and counts it when ``ADMITTED``.

        Raises :class:`ValueError` when ``ip`` is not an IP address.
        """
        address = _address(ip)
        block = self._block_of(address)
        if self.settings.penalties and not self._is_exempt(address):
            now = self._clock()
            table = self._tables[address.version]
            table.expire(now)
            if table.full and table.deny_all:
                return Verdict.PENALTY_TABLE_FULL
            entry = table.entries.get(block)
            if entry is not None and entry.active:
                return Verdict.PENALIZED
        start, _, full = self.settings.max_startups
        if self._unauth_total >= full:
            return Verdict.FULL
        if self._unauth_total >= start and self._rng() < self.drop_probability(self._unauth_total):
            return Verdict.EARLY_DROP
        limit = self.settings.per_source_max_startups
        if limit is not None and self._unauth_by_block[block] >= limit:
            return Verdict.SOURCE_LIMIT
        self._unauth_total += 1
        self._unauth_by_block[block] += 1
        self._unauth_by_address[address] += 1
        return Verdict.ADMITTED

    def authenticated(self, ip: str) -> None:
        """One admitted connection from ``ip`` authenticated: it no longer counts."""
        address = _address(ip)
        self._forget_unauthenticated(address)
        self._authed_by_address[address] += 1

    def closed(self, ip: str, outcome: Outcome) -> Penalty | None:
        """One admitted connection from ``ip`` ended with ``outcome``.

        Returns the :class:`Penalty` when this close made the block's penalty enforced.
        """
        address = _address(ip)
        if outcome is Outcome.AUTHENTICATED:
            if self._authed_by_address[address] <= 0:
                raise ValueError(
                    f"close of an authenticated connection from {ip!r} that never authenticated"
                )
            _decrement(self._authed_by_address, address)
            return None
        self._forget_unauthenticated(address)
        return self._penalise(address, outcome)

    # -- internals ------------------------------------------------------------------------

    def _block_of(self, address: Address) -> Network:
        return _block(address, self._v4_prefix, self._v6_prefix)

    def _is_exempt(self, address: Address) -> bool:
        return any(address in network for network in self._exempt)

    def _forget_unauthenticated(self, address: Address) -> None:
        if self._unauth_by_address[address] <= 0:
            raise ValueError(f"no unauthenticated connection from {str(address)!r} was admitted")
        _decrement(self._unauth_by_address, address)
        _decrement(self._unauth_by_block, self._block_of(address))
        self._unauth_total -= 1

    def _seconds(self, outcome: Outcome) -> float:
        s = self.settings
        return {
            Outcome.NOAUTH: s.penalty_noauth,
            Outcome.AUTHFAIL: s.penalty_authfail,
            Outcome.CRASH: s.penalty_crash,
            Outcome.GRACE_EXCEEDED: s.penalty_grace_exceeded,
        }.get(outcome, 0.0)

    def _penalise(self, address: Address, outcome: Outcome) -> Penalty | None:
        seconds = self._seconds(outcome)
        if not self.settings.penalties or seconds <= 0 or self._is_exempt(address):
            return None
        now = self._clock()
        table = self._tables[address.version]
        table.expire(now)
        block = self._block_of(address)
        entry = table.add(
            block,
            seconds,
            outcome,
            now,
            lo=self.settings.penalty_min,
            hi=self.settings.penalty_max,
        )
        if entry is None:
            return None
        return Penalty(
            source=str(block), ip=str(address), outcome=outcome, seconds=entry.expiry - now
        )


def _decrement(counter: Counter[_K], key: _K) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]

"""Sliding-window detection: pure logic, no I/O, no clock.

The detector is driven by failures (each with its stream sequence and the time the server stored
it) and asked in two steps, kopf's decide-then-apply:

1. :meth:`Detector.decide` looks at a failure and the source's current ban record and returns a
   :class:`Verdict` without changing anything;
2. the caller stores the verdict's ban (if any), then calls :meth:`Detector.commit`.

A verdict that could not be stored is simply not committed, so a redelivery of the same event is
decided again from the same state.
"""

from __future__ import annotations

import enum
import ipaddress
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta

from stockade.core.durations import format_duration
from stockade.core.errors import InvalidInput
from stockade.core.settings import ShieldSettings

from ._model import Ban, Network, ipv4_int

__all__ = ["Detector", "Failure", "Outcome", "Rules", "Verdict"]


@dataclass(frozen=True, slots=True)
class Rules:
    """The detection rules, in seconds; built from :class:`ShieldSettings`."""

    window: float = 600.0
    threshold: float = 5.0
    schedule: tuple[float, ...] = (600.0, 3600.0, 86400.0, 604800.0)
    strike_memory: float = 604800.0
    allowlist: tuple[Network, ...] = ()
    ipv6_prefix: int = 64
    enum_usernames: int = 5
    enum_window: float = 600.0
    weights: Mapping[str, float] = field(default_factory=dict)
    default_weight: float = 1.0

    @classmethod
    def from_settings(cls, settings: ShieldSettings) -> Rules:
        return cls(
            window=settings.window.total_seconds(),
            threshold=settings.threshold,
            schedule=tuple(d.total_seconds() for d in settings.ban_schedule),
            strike_memory=settings.strike_memory.total_seconds(),
            allowlist=tuple(settings.allowlist),
            ipv6_prefix=settings.ipv6_prefix,
            enum_usernames=settings.enum_usernames,
            enum_window=settings.enum_window.total_seconds(),
            weights=dict(settings.reason_weights),
            default_weight=settings.default_weight,
        )

    def ban_length(self, strikes: int) -> float:
        """Seconds of the ban earned by the ``strikes``-th strike (1-based)."""
        return self.schedule[min(max(strikes, 1), len(self.schedule)) - 1]

    def weight(self, reason: str) -> float:
        return self.weights.get(reason, self.default_weight)


@dataclass(frozen=True, slots=True)
class Failure:
    """One failed login as the detector sees it."""

    seq: int
    """Stream sequence (dedupe key)."""
    at: float
    """Epoch seconds the bus stored the event."""
    ip: str
    username: str
    reason: str


class Outcome(enum.Enum):
    COUNTED = "counted"
    BANNED = "banned"
    ALLOWLISTED = "allowlisted"
    ALREADY_BANNED = "already_banned"
    DUPLICATE = "duplicate"
    IGNORED = "ignored"


@dataclass(frozen=True, slots=True)
class Verdict:
    outcome: Outcome
    source: str
    failure: Failure
    weight: float = 0.0
    ban: Ban | None = None


@dataclass(slots=True)
class _SourceState:
    failures: deque[tuple[float, float]] = field(default_factory=deque)
    total: float = 0.0
    users: deque[tuple[float, str]] = field(default_factory=deque)
    user_counts: dict[str, int] = field(default_factory=dict)
    last_at: float = 0.0

    def evict(self, now: float, window: float, enum_window: float) -> None:
        failures = self.failures
        while failures and failures[0][0] <= now - window:
            self.total -= failures.popleft()[1]
        if not failures:
            self.total = 0.0
        users = self.users
        counts = self.user_counts
        while users and users[0][0] <= now - enum_window:
            name = users.popleft()[1]
            left = counts[name] - 1
            if left:
                counts[name] = left
            else:
                del counts[name]


BanLookup = Callable[[str], Ban | None]


class Detector:
    """Per-source sliding windows over weighted failures and distinct usernames."""

    def __init__(self, rules: Rules, *, remember_seqs: int = 65536) -> None:
        self.rules = rules
        self._states: dict[str, _SourceState] = {}
        self._seen: OrderedDict[int, None] = OrderedDict()
        self._remember = remember_seqs
        self._commits = 0
        self._latest = 0.0
        self._keys: dict[str, str] = {}
        self._window_text = format_duration(timedelta(seconds=rules.window))
        self._enum_window_text = format_duration(timedelta(seconds=rules.enum_window))
        # allowlist as (version, network address >> host bits, prefix length)
        self._allow = [
            (n.version, int(n.network_address) >> (n.max_prefixlen - n.prefixlen), n.prefixlen)
            for n in rules.allowlist
        ]

    def __len__(self) -> int:
        """Sources currently tracked."""
        return len(self._states)

    def source_of(self, ip: str) -> str:
        """The source key ``ip`` is counted under (IPv6 grouped by the configured prefix, unless
        the group overlaps the allowlist); empty for an allowlisted address.

        Raises :class:`~stockade.core.errors.InvalidInput` when ``ip`` is no address."""
        key = self._keys.get(ip)
        if key is not None:
            return key
        address: ipaddress.IPv4Address | ipaddress.IPv6Address
        value4 = ipv4_int(ip)
        try:
            if value4 is not None:
                address = ipaddress.IPv4Address(value4)
            else:
                address = ipaddress.ip_address(ip.split("%", 1)[0])
        except ValueError as exc:
            raise InvalidInput("client_ip", f"{ip[:64]!r} is not an IP address") from exc
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        value, bits = int(address), address.max_prefixlen
        prefix = bits if address.version == 4 else self.rules.ipv6_prefix
        key = str(address)
        for version, net, length in self._allow:
            if version != address.version:
                continue
            if length <= bits and value >> (bits - length) == net:
                key = ""  # the address itself is allowlisted
                break
            common = min(length, prefix)
            if prefix < bits and value >> (bits - common) == net >> (length - common):
                prefix = bits  # the group would cover an allowlisted address: ban the host only
        if key and prefix < bits:
            group = value >> (bits - prefix) << (bits - prefix)
            key = f"{ipaddress.IPv6Address(group)}/{prefix}"
        if len(self._keys) > 100_000:
            self._keys.clear()
        self._keys[ip] = key
        return key

    def decide(self, failure: Failure, bans: BanLookup) -> Verdict:
        """What ``failure`` means given the source's ban record; changes nothing.

        Raises :class:`~stockade.core.errors.InvalidInput` when ``failure.ip`` is no address.
        """
        source = self.source_of(failure.ip)
        if failure.seq in self._seen:
            return Verdict(Outcome.DUPLICATE, source, failure)
        if not source:
            return Verdict(Outcome.ALLOWLISTED, failure.ip, failure)
        rules = self.rules
        current = bans(source)
        if current is not None:
            if current.active(failure.at):
                return Verdict(Outcome.ALREADY_BANNED, source, failure)
            if failure.seq <= current.trigger_seq:
                return Verdict(Outcome.IGNORED, source, failure)
        weight = rules.weight(failure.reason)
        state = self._states.get(source)
        total = weight
        distinct = 1
        if state is not None:
            state.evict(failure.at, rules.window, rules.enum_window)
            total += state.total
            distinct = len(state.user_counts) + (failure.username not in state.user_counts)
        reason = ""
        if weight > 0 and total >= rules.threshold - 1e-9:
            reason = f"brute-force: {total:g} weighted failures in {self._window_text}"
        elif rules.enum_usernames and distinct >= rules.enum_usernames:
            reason = f"user-enumeration: {distinct} usernames in {self._enum_window_text}"
        if not reason:
            return Verdict(Outcome.COUNTED, source, failure, weight)
        strikes = 1
        if current is not None and current.until + rules.strike_memory > failure.at:
            strikes = current.strikes + 1
        ban = Ban(
            source=source,
            until=failure.at + rules.ban_length(strikes),
            strikes=strikes,
            reason=reason,
            banned_at=failure.at,
            trigger_seq=failure.seq,
        )
        return Verdict(Outcome.BANNED, source, failure, weight, ban)

    def observe(
        self, seq: int, at: float, ip: str, username: str, reason: str, bans: BanLookup
    ) -> Outcome | Verdict:
        """:meth:`decide` and :meth:`commit` in one step, without building a :class:`Failure` or
        a :class:`Verdict`, for every failure that has nothing to store (the hot path).

        Returns the :class:`Outcome` of a failure it has committed, or the ``BANNED`` verdict
        (not committed: store its ban, then :meth:`commit` it). Raises
        :class:`~stockade.core.errors.InvalidInput` when ``ip`` is no address.
        """
        source = self._keys.get(ip)
        if source is None:
            source = self.source_of(ip)
        if seq in self._seen:
            return Outcome.DUPLICATE
        if not source:
            self._mark(seq, at)
            return Outcome.ALLOWLISTED
        rules = self.rules
        current = bans(source)
        if current is not None:
            if current.until > at:
                self._mark(seq, at)
                return Outcome.ALREADY_BANNED
            if seq <= current.trigger_seq:
                self._mark(seq, at)
                return Outcome.IGNORED
        weight = rules.weights.get(reason, rules.default_weight)
        state = self._states.get(source)
        total = weight
        distinct = 1
        if state is not None:
            state.evict(at, rules.window, rules.enum_window)
            total += state.total
            distinct = len(state.user_counts) + (username not in state.user_counts)
        if (weight > 0 and total >= rules.threshold - 1e-9) or (
            rules.enum_usernames and distinct >= rules.enum_usernames
        ):
            return self.decide(Failure(seq, at, ip, username, reason), bans)
        self._mark(seq, at)
        if state is None:
            state = self._states[source] = _SourceState()
        if weight > 0:
            state.failures.append((at, weight))
            state.total += weight
        state.users.append((at, username))
        counts = state.user_counts
        counts[username] = counts.get(username, 0) + 1
        if at > state.last_at:
            state.last_at = at
        return Outcome.COUNTED

    def _mark(self, seq: int, at: float) -> None:
        """The bookkeeping every committed failure gets: seen, latest time, the sweep."""
        seen = self._seen
        seen[seq] = None
        if len(seen) > self._remember:
            seen.popitem(last=False)
        if at > self._latest:
            self._latest = at
        self._commits += 1
        if self._commits % 4096 == 0:
            self._sweep()

    def commit(self, verdict: Verdict) -> None:
        """Record ``verdict`` (after its ban, if any, was stored)."""
        failure = verdict.failure
        seen = self._seen
        seen[failure.seq] = None
        if len(seen) > self._remember:
            seen.popitem(last=False)
        if failure.at > self._latest:
            self._latest = failure.at
        if verdict.outcome is Outcome.BANNED:
            self._states.pop(verdict.source, None)
        elif verdict.outcome is Outcome.COUNTED:
            state = self._states.get(verdict.source)
            if state is None:
                state = self._states[verdict.source] = _SourceState()
            if verdict.weight > 0:
                state.failures.append((failure.at, verdict.weight))
                state.total += verdict.weight
            state.users.append((failure.at, failure.username))
            state.user_counts[failure.username] = state.user_counts.get(failure.username, 0) + 1
            state.last_at = max(state.last_at, failure.at)
        self._commits += 1
        if self._commits % 4096 == 0:
            self._sweep()

    def _sweep(self) -> None:
        horizon = self._latest - max(self.rules.window, self.rules.enum_window)
        stale = [key for key, state in self._states.items() if state.last_at <= horizon]
        for key in stale:
            del self._states[key]

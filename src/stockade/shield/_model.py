"""Sources and bans: the values every other shield module passes around."""

from __future__ import annotations

import functools
import ipaddress
import json
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from stockade.core.errors import InvalidInput

__all__ = ["Ban", "Network", "is_allowlisted", "overlaps_allowlist", "parse_source", "source_key"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_source(text: str, *, ipv6_prefix: int = 128) -> Network:
    """An address or CIDR as typed by a user or sent by the gateway, as a network.

    A bare IPv6 address is widened to its ``ipv6_prefix`` network; a bare IPv4 address is a /32.
    Raises :class:`InvalidInput` for anything else.
    """
    return _parse_source(text, ipv6_prefix)


@functools.lru_cache(maxsize=65536)  # networks are immutable; bans re-parse the same sources
def _parse_source(text: str, ipv6_prefix: int) -> Network:
    if "/" not in text:
        value = ipv4_int(text)
        if value is not None:
            return ipaddress.IPv4Network(value)
    text = text.strip()
    if "%" in text:  # zone index of a link-local address
        text = text.split("%", 1)[0]
    try:
        if "/" in text:
            return ipaddress.ip_network(text, strict=False)
        address = ipaddress.ip_address(text)
    except ValueError as exc:
        raise InvalidInput("source", f"{text[:64]!r} is not an IP address or CIDR") from exc
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return ipaddress.ip_network(address.ipv4_mapped)
        return ipaddress.ip_network((address, ipv6_prefix), strict=False)
    return ipaddress.ip_network(address)


def ipv4_int(text: str) -> int | None:
    """The value of a dotted-quad IPv4 address in its canonical form (what
    :func:`ipaddress.ip_address` accepts as IPv4: four decimal octets, no leading zeros), else
    ``None``. A fast path: the C parser instead of :mod:`ipaddress`'s Python one."""
    try:
        return int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big")
    except (OSError, ValueError, TypeError):
        return None


def source_key(network: Network) -> str:
    """The canonical text of a source: the bare address for a single host, else the CIDR."""
    if network.prefixlen == network.max_prefixlen:
        return str(network.network_address)
    return str(network)


def is_allowlisted(network: Network, allowlist: Iterable[Network]) -> bool:
    """True when ``network`` lies entirely inside one allowlisted network."""
    return any(_within(network, allowed) for allowed in allowlist)


def _within(network: Network, allowed: Network) -> bool:
    if isinstance(network, ipaddress.IPv4Network) and isinstance(allowed, ipaddress.IPv4Network):
        return network.subnet_of(allowed)
    if isinstance(network, ipaddress.IPv6Network) and isinstance(allowed, ipaddress.IPv6Network):
        return network.subnet_of(allowed)
    return False


def overlaps_allowlist(network: Network, allowlist: Iterable[Network]) -> Network | None:
    """The first allowlisted network that ``network`` overlaps, if any (a ban must not)."""
    for allowed in allowlist:
        if network.version == allowed.version and network.overlaps(allowed):
            return allowed
    return None


@dataclass(frozen=True, slots=True)
class Ban:
    """One source's ban record, as stored in the ban store.

    The record outlives the ban itself by the strike memory so that the next ban escalates;
    the ban is in force while ``until`` (epoch seconds) lies in the future.
    """

    source: str
    """Canonical source text (:func:`source_key`): ``203.0.113.7`` or ``2001:db8:1:2::/64``."""
    until: float
    """Epoch seconds when the ban ends."""
    strikes: int
    """How many bans this source earned within the strike memory, this one included."""
    reason: str
    """Why: ``brute-force: 5 failures in 10m``, ``user-enumeration: ...``, or an admin's text."""
    banned_at: float
    """Epoch seconds when the ban was decided (for automatic bans: the triggering event's time)."""
    trigger_seq: int = 0
    """Stream sequence of the failure event that triggered the ban; 0 for a manual ban."""

    @property
    def network(self) -> Network:
        return parse_source(self.source)

    def active(self, now: float) -> bool:
        return self.until > now

    def remaining(self, now: float) -> float:
        """Seconds left, 0 once expired."""
        return max(0.0, self.until - now)

    def to_bytes(self) -> bytes:
        record = {
            "source": self.source,
            "until": self.until,
            "strikes": self.strikes,
            "reason": self.reason,
            "banned_at": self.banned_at,
            "trigger_seq": self.trigger_seq,
        }
        return json.dumps(record, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Ban:
        """Parse a stored record; raises :class:`InvalidInput` when it is not one."""
        try:
            raw = json.loads(data)
            ban = cls(
                source=str(raw["source"]),
                until=float(raw["until"]),
                strikes=int(raw["strikes"]),
                reason=str(raw["reason"]),
                banned_at=float(raw["banned_at"]),
                trigger_seq=int(raw.get("trigger_seq", 0)),
            )
            parse_source(ban.source)
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidInput("ban record", str(exc)) from exc
        return ban

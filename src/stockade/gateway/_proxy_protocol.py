"""PROXY protocol v1 (text) and v2 (binary) headers, as sent by HAProxy and cloud load balancers.

Spec: https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt. When the gateway is configured
for it, every connection must start with one header; the addresses in it replace the socket's peer.
``LOCAL`` (v2) and ``UNKNOWN`` (v1) headers keep the socket's own peer address (health checks).

Parsing is pure (:func:`parse_v1`, :func:`parse_v2`); :func:`read_header` drives it over a
``read_exact`` callable and never reads a byte past the header, so the SSH banner that follows
is left for the SSH server.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from stockade.core.errors import InvalidInput

__all__ = [
    "V1_MAX_LEN",
    "V2_MAX_BODY",
    "V2_SIGNATURE",
    "ProxyAddresses",
    "parse_v1",
    "parse_v2",
    "read_header",
]

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
#: The longest v1 line the spec allows, CRLF included.
V1_MAX_LEN = 107
#: The largest v2 body accepted (addresses plus TLVs); the spec allows more, nobody sends it.
V2_MAX_BODY = 1024

_FIELD = "proxy protocol"


@dataclass(frozen=True, slots=True)
class ProxyAddresses:
    """The original client (``source``) and the address it connected to (``dest``)."""

    source_ip: str
    source_port: int
    dest_ip: str
    dest_port: int


def _bad(problem: str) -> InvalidInput:
    return InvalidInput(_FIELD, problem)


def _port(text: bytes) -> int:
    if not text.isdigit() or (len(text) > 1 and text.startswith(b"0")) or len(text) > 5:
        raise _bad(f"bad port {text!r}")
    value = int(text)
    if value > 65535:
        raise _bad(f"port {value} out of range")
    return value


def parse_v1(line: bytes) -> ProxyAddresses | None:
    """Parse one v1 line (``PROXY TCP4 1.2.3.4 5.6.7.8 1111 22\\r\\n``); ``None`` for UNKNOWN."""
    if len(line) > V1_MAX_LEN:
        raise _bad(f"v1 header longer than {V1_MAX_LEN} bytes")
    if not line.endswith(b"\r\n"):
        raise _bad("v1 header does not end with CRLF")
    parts = line[:-2].split(b" ")
    if parts[0] != b"PROXY" or len(parts) < 2:
        raise _bad("v1 header does not start with 'PROXY '")
    if parts[1] == b"UNKNOWN":
        return None
    if parts[1] not in (b"TCP4", b"TCP6") or len(parts) != 6:
        raise _bad("v1 header needs TCP4|TCP6 and four addresses/ports")
    version = 4 if parts[1] == b"TCP4" else 6
    addresses = []
    for raw in parts[2:4]:
        try:
            address = ipaddress.ip_address(raw.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            raise _bad(f"bad address {raw[:64]!r}") from None
        if address.version != version:
            raise _bad(f"address {address} is not IPv{version}")
        addresses.append(str(address))
    return ProxyAddresses(addresses[0], _port(parts[4]), addresses[1], _port(parts[5]))


def parse_v2(header: bytes, body: bytes) -> ProxyAddresses | None:
    """Parse a v2 header (16 bytes) and its body; ``None`` for LOCAL or an unspecified family."""
    if len(header) != 16 or not header.startswith(V2_SIGNATURE):
        raise _bad("v2 header signature mismatch")
    version_command, family, length = struct.unpack("!BBH", header[12:16])
    if version_command >> 4 != 2:
        raise _bad(f"unsupported v2 version {version_command >> 4}")
    command = version_command & 0x0F
    if command not in (0, 1):
        raise _bad(f"unknown v2 command {command}")
    if len(body) != length:
        raise _bad(f"v2 body is {len(body)} bytes, header says {length}")
    if command == 0:
        return None
    if family == 0x11:  # TCP over IPv4
        if length < 12:
            raise _bad("v2 IPv4 body shorter than 12 bytes")
        src, dst, sport, dport = struct.unpack("!4s4sHH", body[:12])
        return ProxyAddresses(
            str(ipaddress.IPv4Address(src)), sport, str(ipaddress.IPv4Address(dst)), dport
        )
    if family == 0x21:  # TCP over IPv6
        if length < 36:
            raise _bad("v2 IPv6 body shorter than 36 bytes")
        src, dst, sport, dport = struct.unpack("!16s16sHH", body[:36])
        return ProxyAddresses(
            str(ipaddress.IPv6Address(src)), sport, str(ipaddress.IPv6Address(dst)), dport
        )
    if family == 0x00:
        return None
    raise _bad(f"unsupported v2 address family 0x{family:02x} (only TCP over IPv4/IPv6)")


async def read_header(read_exact: Callable[[int], Awaitable[bytes]]) -> ProxyAddresses | None:
    """Read one v1 or v2 header with ``read_exact(n)`` (which returns exactly n bytes or raises).

    Never reads past the header. Raises :class:`InvalidInput` when the stream does not start
    with a valid header.
    """
    start = await read_exact(12)
    if start == V2_SIGNATURE:
        rest = await read_exact(4)
        (length,) = struct.unpack("!H", rest[2:4])
        if length > V2_MAX_BODY:
            raise _bad(f"v2 body of {length} bytes exceeds {V2_MAX_BODY}")
        body = await read_exact(length) if length else b""
        return parse_v2(start + rest, body)
    if not start.startswith(b"PROXY "):
        raise _bad("connection does not start with a PROXY header")
    line = bytearray(start)
    while not line.endswith(b"\r\n"):
        if len(line) >= V1_MAX_LEN:
            raise _bad(f"v1 header longer than {V1_MAX_LEN} bytes")
        line += await read_exact(1)
    return parse_v1(bytes(line))

from __future__ import annotations

import ipaddress
import struct

import pytest

from stockade.core.errors import InvalidInput
from stockade.gateway._proxy_protocol import (
    V2_SIGNATURE,
    ProxyAddresses,
    parse_v1,
    parse_v2,
    read_header,
)


def _v2(command: int, family: int, body: bytes) -> bytes:
    return V2_SIGNATURE + struct.pack("!BBH", 0x20 | command, family, len(body)) + body


def _reader(data: bytes):  # type: ignore[no-untyped-def]
    view = {"pos": 0}

    async def read_exact(n: int) -> bytes:
        start = view["pos"]
        chunk = data[start : start + n]
        if len(chunk) != n:
            raise EOFError("short read")
        view["pos"] = start + n
        return chunk

    return read_exact, view


def test_v1_tcp4_and_tcp6() -> None:
    assert parse_v1(b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 22\r\n") == ProxyAddresses(
        "192.0.2.1", 56324, "198.51.100.2", 22
    )
    assert parse_v1(b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n") == ProxyAddresses(
        "2001:db8::1", 1, "2001:db8::2", 2
    )
    assert parse_v1(b"PROXY UNKNOWN\r\n") is None
    assert parse_v1(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n") is None


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 22\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.2 56324\r\n",
        b"PROXY TCP4 2001:db8::1 198.51.100.2 1 2\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.2 65536 22\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.2 022 22\r\n",
        b"PROXY UDP4 192.0.2.1 198.51.100.2 1 2\r\n",
        b"PROXY TCP4 999.0.2.1 198.51.100.2 1 2\r\n",
        b"HELLO\r\n",
        b"PROXY TCP4 " + b"1" * 120 + b"\r\n",
    ],
)
def test_v1_rejects(line: bytes) -> None:
    with pytest.raises(InvalidInput):
        parse_v1(line)


def test_v2_ipv4_ipv6_local() -> None:
    body4 = struct.pack("!4s4sHH", bytes([192, 0, 2, 1]), bytes([10, 0, 0, 1]), 4000, 22)
    frame = _v2(1, 0x11, body4 + b"\x03\x00\x04abcd")  # with a TLV, ignored
    assert parse_v2(frame[:16], frame[16:]) == ProxyAddresses("192.0.2.1", 4000, "10.0.0.1", 22)
    src = ipaddress.IPv6Address("2001:db8::7").packed
    dst = ipaddress.IPv6Address("::1").packed
    frame6 = _v2(1, 0x21, struct.pack("!16s16sHH", src, dst, 5, 2222))
    assert parse_v2(frame6[:16], frame6[16:]) == ProxyAddresses("2001:db8::7", 5, "::1", 2222)
    local = _v2(0, 0x00, b"")
    assert parse_v2(local[:16], b"") is None


@pytest.mark.parametrize(
    "frame",
    [
        _v2(1, 0x11, b"\x00" * 8),  # short IPv4 body
        _v2(1, 0x21, b"\x00" * 12),  # short IPv6 body
        _v2(2, 0x11, b"\x00" * 12),  # unknown command
        _v2(1, 0x31, b"\x00" * 216),  # AF_UNIX
        V2_SIGNATURE + struct.pack("!BBH", 0x11, 0x11, 12) + b"\x00" * 12,  # version 1
    ],
)
def test_v2_rejects(frame: bytes) -> None:
    with pytest.raises(InvalidInput):
        parse_v2(frame[:16], frame[16:])


async def test_read_header_stops_at_the_header() -> None:
    banner = b"SSH-2.0-OpenSSH_9.2\r\n"
    read_exact, view = _reader(b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 22\r\n" + banner)
    result = await read_header(read_exact)
    assert result is not None
    assert result.source_ip == "192.0.2.1"
    assert view["pos"] == len(b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 22\r\n")

    body = struct.pack("!4s4sHH", bytes([192, 0, 2, 9]), bytes([10, 0, 0, 1]), 1, 22)
    frame = _v2(1, 0x11, body)
    read_exact, view = _reader(frame + banner)
    result = await read_header(read_exact)
    assert result == ProxyAddresses("192.0.2.9", 1, "10.0.0.1", 22)
    assert view["pos"] == len(frame)


@pytest.mark.parametrize(
    "data",
    [
        b"SSH-2.0-OpenSSH_9.2\r\n",
        b"PROXY TCP4 " + b"1" * 200,
        V2_SIGNATURE + struct.pack("!BBH", 0x21, 0x11, 4000),
    ],
)
async def test_read_header_rejects(data: bytes) -> None:
    read_exact, _ = _reader(data)
    with pytest.raises(InvalidInput):
        await read_header(read_exact)

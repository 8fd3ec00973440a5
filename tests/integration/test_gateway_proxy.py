"""PROXY protocol behind a load balancer: only trusted peers may name the client address."""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path

from tests.gateway.harness import gateway_env


async def _send(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(200), 10)
    finally:
        writer.close()


async def test_trusted_proxy_names_the_client(tmp_path: Path, nats_url: str) -> None:
    async with gateway_env(tmp_path, nats_url, proxy_protocol=True) as env:
        header = b"PROXY TCP4 203.0.113.9 192.0.2.1 40000 2222\r\n"
        await _send(env.port, header + b"not ssh at all\r\n")
        await env.failed.settle()
        assert env.failed.matching(client_ip="203.0.113.9", client_port=40000)
        assert not env.failed.matching(client_ip="127.0.0.1")


async def test_untrusted_peer_cannot_claim_an_address(tmp_path: Path, nats_url: str) -> None:
    untrusted = [ipaddress.ip_network("192.0.2.0/24")]  # the load balancer is elsewhere
    async with gateway_env(tmp_path, nats_url, proxy_protocol=True, proxy_trusted=untrusted) as env:
        answer = await _send(env.port, b"PROXY TCP4 127.0.0.1 192.0.2.1 40000 2222\r\n")
        assert answer == b""  # closed before any SSH byte
        await env.failed.settle()
        (event,) = env.failed.received
        assert (event["client_ip"], event["reason"]) == ("127.0.0.1", "untrusted_proxy")

"""Acceptance: 50 loopback sources (127.0.0.10-59) each hold 40 connections open without
authenticating for 30 s; meanwhile a registered user on 127.0.0.2 logs in 20 times without
retries. All 20 succeed; the flooding sources are refused and penalised."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from gateway.harness import GatewayEnv, gateway_env

from stockade.core.settings import PreAuthSettings

# serial: a flood measures the gateway's admission under load; another worker's load skews it
pytestmark = [pytest.mark.timeout(240), pytest.mark.slow, pytest.mark.serial]

SOURCES = [f"127.0.0.{n}" for n in range(10, 60)]
PER_SOURCE = 40
FLOOD_SECONDS = 30.0


@pytest.fixture
async def env(tmp_path: Path, nats_url: str) -> AsyncIterator[GatewayEnv]:
    preauth = PreAuthSettings(per_source_max_startups=4, max_startups="600:30:1000")
    async with gateway_env(
        tmp_path, nats_url, preauth=preauth, handshake_timeout=5.0, max_connections=5000
    ) as env:
        yield env


async def _hold(port: int, source: str, until: float, refused: list[int]) -> None:
    """Keep up to PER_SOURCE idle connections from ``source`` open until ``until``; count the
    ones the gateway closes before sending its SSH banner (refused before key exchange)."""
    loop = asyncio.get_running_loop()
    open_: set[asyncio.StreamWriter] = set()

    async def one() -> None:
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, local_addr=(source, 0)
            )
        except OSError:
            refused[0] += 1
            return
        open_.add(writer)
        try:
            banner = await asyncio.wait_for(reader.read(64), max(0.1, until - loop.time()))
            if not banner:
                refused[0] += 1
            else:
                await asyncio.wait_for(reader.read(), max(0.1, until - loop.time()))
        except (TimeoutError, OSError):
            pass
        finally:
            open_.discard(writer)
            writer.close()

    tasks: set[asyncio.Task[None]] = set()
    while loop.time() < until:
        while len(tasks) < PER_SOURCE:
            task = asyncio.ensure_future(one())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.sleep(1.0)  # refill once a second: a steady flood, not a busy loop
    for task in list(tasks):
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_flood_does_not_lock_out_a_registered_user(env: GatewayEnv) -> None:
    key = await env.add_user("ursula")
    assert key is not None
    loop = asyncio.get_running_loop()
    until = loop.time() + FLOOD_SECONDS
    refused = [0]
    flood = [asyncio.ensure_future(_hold(env.port, s, until, refused)) for s in SOURCES]
    await asyncio.sleep(2)  # the flood is established
    results = []
    for _ in range(20):
        cmd = env.ssh_cmd("ursula", "echo in", key=key, options=["-o", "BindAddress=127.0.0.2"])
        results.append(await env.run(cmd))
    await asyncio.gather(*flood)
    assert [r.returncode for r in results] == [0] * 20, [r.stderr for r in results]
    assert all(r.stdout == b"in\n" for r in results)
    assert refused[0] > 0, "no flooding connection was refused"
    await env.failed.settle()
    penalised = {e["client_ip"] for e in env.failed.matching(reason="penalized")}
    assert penalised & set(SOURCES), "no flooding source was penalised"
    assert "127.0.0.2" not in penalised

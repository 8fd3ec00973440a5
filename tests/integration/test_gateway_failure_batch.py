"""The gateway's failed authentications travel in batches and are flushed when it stops.

A real gateway, real ``ssh`` clients and a real NATS: with a batcher whose delay is far longer
than the test, the failures are held at the gateway until ``stop()`` flushes them as one
``stockade.auth.failed.batch``; without a batcher each one is a ``stockade.auth.failed``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from gateway.harness import GatewayEnv, gateway_env, keygen


async def _fail(env: GatewayEnv, key: Path, sources: list[str]) -> None:
    for source in sources:
        cmd = env.ssh_cmd("nobody1", "true", key=key, options=["-o", f"BindAddress={source}"])
        assert (await env.run(cmd)).returncode == 255


async def test_failures_are_held_until_stop_flushes_them(tmp_path: Path, nats_url: str) -> None:
    async with gateway_env(tmp_path, nats_url, batch_delay=3600.0) as env:
        key = keygen(tmp_path / "id_x")
        sources = ["127.0.3.1", "127.0.3.2", "127.0.3.3"]
        await _fail(env, key, sources)
        await env.failed.settle(rounds=5)
        assert env.failed.matching(username="nobody1") == []  # batched, not sent yet
        await env.gateway.stop(grace=0)
        await env.failed.settle()
        found = env.failed.matching(username="nobody1")
        assert [e["client_ip"] for e in found] == sources  # in order, each once
        assert {(e["reason"], e["method"], e["gateway_id"]) for e in found} == {
            ("unknown_user", "publickey", "gw-test")
        }
        assert env.failed.batches == 1


async def test_without_a_batcher_each_failure_is_one_event(tmp_path: Path, nats_url: str) -> None:
    async with gateway_env(tmp_path, nats_url, batch_delay=None) as env:
        key = keygen(tmp_path / "id_x")
        await _fail(env, key, ["127.0.3.4", "127.0.3.5"])
        for _ in range(50):
            if len(env.failed.matching(username="nobody1")) == 2:
                break
            await asyncio.sleep(0.1)
        assert [e["client_ip"] for e in env.failed.matching(username="nobody1")] == [
            "127.0.3.4",
            "127.0.3.5",
        ]
        assert env.failed.batches == 0

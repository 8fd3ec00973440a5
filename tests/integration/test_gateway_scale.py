"""Many sessions at once, and killing a live one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from gateway.harness import GatewayEnv, ended_sessions, eventually, gateway_env

from stockade.core.settings import PreAuthSettings

# serial: hundreds of concurrent sessions; another worker's load turns waits into timeouts
pytestmark = [pytest.mark.timeout(600), pytest.mark.serial]


@pytest.fixture
async def env(tmp_path: Path, nats_url: str) -> AsyncIterator[GatewayEnv]:
    # 200 logins at once from one address: beyond the per-source pre-auth default (64), which
    # protects against exactly this from a stranger
    preauth = PreAuthSettings(per_source_max_startups=256)
    async with gateway_env(tmp_path, nats_url, preauth=preauth) as env:
        yield env


@pytest.mark.slow
async def test_200_concurrent_sessions_exit_codes(env: GatewayEnv) -> None:
    key = await env.add_user("alice")
    assert key is not None
    gate = asyncio.Semaphore(200)

    async def one(i: int) -> tuple[int, int, bytes]:
        async with gate:
            result = await env.run(env.ssh_cmd("alice", f"echo {i}; exit {i % 7}", key=key))
            return i, result.returncode, result.stdout

    results = await asyncio.gather(*(one(i) for i in range(200)))
    wrong = [
        (i, code, out) for i, code, out in results if code != i % 7 or out != f"{i}\n".encode()
    ]
    assert wrong == []
    assert len(await ended_sessions(env.identity, "alice")) == 200


async def test_kill_ends_a_live_session(env: GatewayEnv) -> None:
    key = await env.add_user("kim")
    proc = await asyncio.create_subprocess_exec(
        *env.ssh_cmd("kim", "echo ready; sleep 300", key=key),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    # the shell runs (its channel is open, so the message has somewhere to go): the session
    # row alone exists from the login on, before the channel
    assert proc.stdout is not None
    assert await asyncio.wait_for(proc.stdout.readline(), 60) == b"ready\n"
    live = await env.identity.list_sessions(active_only=True, username="kim")
    assert live, "the session never started"
    await env.identity.kill_session(live[0].session_id, by="admin")
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode != 0
    assert err.count(b"stockade: session terminated by an administrator") == 1, err
    assert await eventually(lambda: env.gateway.live_sessions == [])
    (row,) = await ended_sessions(env.identity, "kim")
    assert row.end_reason == "killed"

"""Two gateways, one state: ``sessions kill`` and ``users disable`` reach the gateway that holds
the session. Two in-process gateways share one identity store and one NATS (as two ``stockade
serve gateway`` replicas do); a live OpenSSH session runs on each, and the kill published by
``identity.kill_session`` (what ``stockade sessions kill`` calls) ends only B's session."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from gateway.harness import GatewayEnv, eventually, gateway_env

from stockade.core.settings import GatewaySettings
from stockade.gateway import Gateway

pytestmark = pytest.mark.timeout(180)


@contextlib.asynccontextmanager
async def _second_gateway(env: GatewayEnv) -> AsyncIterator[Gateway]:
    """Gateway B: another process's view, same identity, authz and bus, its own data dir."""
    data_dir = env.tmp / "data-b"
    data_dir.mkdir()
    bus = env.gateway._publisher
    gateway = Gateway(
        settings=GatewaySettings(port=0, max_connections_per_source=1000, gateway_id="gw-b"),
        identity=env.identity,
        authz=env.authz,
        publisher=bus,
        events=bus,  # type: ignore[arg-type]
        data_dir=data_dir,
    )
    await gateway.start()
    try:
        yield gateway
    finally:
        await gateway.stop(grace=0)


@contextlib.asynccontextmanager
async def _shell(
    env: GatewayEnv, port: int, user: str, key: Path
) -> AsyncIterator[asyncio.subprocess.Process]:
    cmd = env.ssh_cmd(user, "sleep 300", key=key)
    cmd[cmd.index("-p") + 1] = str(port)
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _live_on(gateway: Gateway, before: set[str]) -> str:
    new = await eventually(lambda: set(gateway.live_sessions) - before)
    assert new, f"no session started on {gateway.gateway_id}"
    (session_id,) = new
    return str(session_id)


async def _ended(proc: asyncio.subprocess.Process, message: bytes) -> None:
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode != 0
    assert message in err, err


@pytest.fixture
async def env(tmp_path: Path, nats_url: str) -> AsyncIterator[GatewayEnv]:
    async with gateway_env(tmp_path, nats_url, gateway_id="gw-a") as env:
        yield env


async def test_a_kill_reaches_the_gateway_holding_the_session_only(env: GatewayEnv) -> None:
    key = await env.add_user("kim")
    assert key is not None
    async with (
        _second_gateway(env) as b,
        _shell(env, env.port, "kim", key) as on_a,
        _shell(env, b.listening[0][1], "kim", key) as on_b,
    ):
        a_id = await _live_on(env.gateway, set())
        b_id = await _live_on(b, set())
        rows = {row.session_id: row for row in await env.identity.list_sessions()}
        assert rows[a_id].gateway_id == "gw-a"
        assert rows[b_id].gateway_id == "gw-b"

        await env.identity.kill_session(b_id, by="admin", message="bye from the admin")
        await _ended(on_b, b"bye from the admin")
        assert await eventually(lambda: b_id not in b.live_sessions)
        info = await env.identity.get_session(b_id)
        assert info.end_reason == "killed"
        # A's session is untouched: still live, in the store and on its gateway
        assert on_a.returncode is None
        assert env.gateway.live_sessions == [a_id]
        assert (await env.identity.get_session(a_id)).live
        await asyncio.sleep(0.3)  # a stray close of A's session would land meanwhile
        assert on_a.returncode is None
        assert env.gateway.live_sessions == [a_id]


async def test_disabling_a_user_ends_their_sessions_on_both_gateways(env: GatewayEnv) -> None:
    key = await env.add_user("lou")
    other = await env.add_user("max")
    assert key is not None
    assert other is not None
    async with (
        _second_gateway(env) as b,
        _shell(env, env.port, "lou", key) as on_a,
        _shell(env, b.listening[0][1], "lou", key) as on_b,
        _shell(env, b.listening[0][1], "max", other) as bystander,
    ):
        a_id = await _live_on(env.gateway, set())
        b_ids = await eventually(lambda: len(b.live_sessions) == 2 and set(b.live_sessions))
        assert b_ids, "both sessions on B never started"
        await env.identity.set_disabled("lou", True)
        await _ended(on_a, b"user lou was disabled")
        await _ended(on_b, b"user lou was disabled")
        assert await eventually(lambda: a_id not in env.gateway.live_sessions)
        assert await eventually(lambda: len(b.live_sessions) == 1)
        rows = await env.identity.list_sessions(username="lou")
        assert len(rows) == 2
        assert not any(row.live for row in rows)
        assert bystander.returncode is None  # max's session on B stays
        (left,) = b.live_sessions
        assert (await env.identity.get_session(left)).username == "max"

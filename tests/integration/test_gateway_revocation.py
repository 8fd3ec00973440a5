"""Trust withdrawn ends sessions at once (Teleport's lock semantics): disabling or removing a
user, removing the key a session used, or a role change that policy now denies closes every
affected session and forward-only connection, with a message, through the real OpenSSH client.
Also: the sessions of a crashed gateway boot are ended (and their tokens die) when it starts again,
and a stopping gateway ends and records its sessions."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from gateway.harness import GatewayEnv, ended_sessions, eventually, gateway_env, policy_bundle
from sqlalchemy import update

from stockade.core.errors import TokenRejected
from stockade.core.settings import GatewaySettings
from stockade.gateway import Gateway
from stockade.store import GatewayRow

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
async def env(tmp_path: Path, nats_url: str) -> AsyncIterator[GatewayEnv]:
    async with gateway_env(tmp_path, nats_url) as env:
        yield env


async def _live(env: GatewayEnv, user: str) -> str:
    async def started() -> list[object]:
        return list(await env.identity.list_sessions(active_only=True, username=user))

    rows = await eventually(started)
    assert rows, f"{user}'s session never started"
    return str(rows[0].session_id)  # type: ignore[attr-defined]


@contextlib.asynccontextmanager
async def _ssh(
    env: GatewayEnv, user: str, key: Path, *args: str
) -> AsyncIterator[asyncio.subprocess.Process]:
    proc = await asyncio.create_subprocess_exec(
        *env.ssh_cmd(user, *args, key=key),
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


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _closed_with(proc: asyncio.subprocess.Process, message: bytes | None) -> None:
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode != 0
    if message is not None:
        assert message in err, err


Revoke = Callable[[GatewayEnv], Awaitable[object]]

REVOCATIONS: dict[str, tuple[Revoke, bytes]] = {
    "disable": (lambda env: env.identity.set_disabled("rita", True), b"user rita was disabled"),
    "remove": (lambda env: env.identity.remove_user("rita"), b"user rita was removed"),
}


async def _key_removal(env: GatewayEnv) -> None:
    (key,) = (await env.identity.get_user("rita")).keys
    await env.identity.remove_key("rita", key.fingerprint)


REVOCATIONS["key_removed"] = (_key_removal, b"the key this session logged in with was removed")


@pytest.mark.parametrize("how", sorted(REVOCATIONS))
async def test_revocation_closes_shells(env: GatewayEnv, how: str) -> None:
    key = await env.add_user("rita", "tunneler")
    assert key is not None
    revoke, message = REVOCATIONS[how]
    async with _ssh(env, "rita", key, "sleep 300") as shell:
        session_id = await _live(env, "rita")
        await revoke(env)
        await _closed_with(shell, message)
    assert await eventually(lambda: session_id not in env.gateway.live_sessions)
    rows = await env.identity.list_sessions(username="rita")
    assert not any(row.live for row in rows)


#: The default bundle, plus: role ``suspended`` may not use SSH at all.
_FORWARDS = 'not input.action in {"ssh.direct-tcpip", "ssh.tcpip-forward"}'
SUSPENDABLE = {_FORWARDS: _FORWARDS + '\n\tnot "suspended" in input.context.user.roles'}


async def test_role_change_that_policy_denies_closes_the_session(
    tmp_path: Path, nats_url: str
) -> None:
    bundle = policy_bundle(tmp_path / "bundle", SUSPENDABLE)
    (tmp_path / "gw").mkdir()
    async with gateway_env(tmp_path / "gw", nats_url, bundle_dir=bundle) as env:
        key = await env.add_user("rita")
        assert key is not None
        async with _ssh(env, "rita", key, "sleep 300") as shell:
            session_id = await _live(env, "rita")
            await env.identity.set_roles("rita", ["developer"])  # still allowed: left alone
            await asyncio.sleep(0.5)
            assert session_id in env.gateway.live_sessions
            await env.identity.set_roles("rita", ["developer", "suspended"])
            await _closed_with(shell, b"access withdrawn")
        assert await eventually(lambda: session_id not in env.gateway.live_sessions)


@pytest.mark.parametrize("how", ["disable", "remove", "key_removed"])
async def test_revocation_closes_forward_only_connections(env: GatewayEnv, how: str) -> None:
    """``ssh -N -R``: listed as a session, and closed by a revocation (no new -R after it)."""
    key = await env.add_user("rita", "tunneler")
    assert key is not None
    port = _free_port()
    async with _ssh(env, "rita", key, "-N", "-o", "ExitOnForwardFailure=yes",
                    "-R", f"127.0.0.1:{port}:127.0.0.1:9") as tunnel:  # fmt: skip
        session_id = await _live(env, "rita")
        assert session_id in env.gateway.live_sessions
        revoke, _message = REVOCATIONS[how]
        await revoke(env)
        await _closed_with(tunnel, None)
    assert await eventually(lambda: session_id not in env.gateway.live_sessions)


async def test_forward_only_connection_can_be_killed(env: GatewayEnv) -> None:
    key = await env.add_user("tess", "tunneler")
    assert key is not None
    port = _free_port()
    async with _ssh(env, "tess", key, "-N", "-R", f"127.0.0.1:{port}:127.0.0.1:9") as tunnel:
        session_id = await _live(env, "tess")
        await env.identity.kill_session(session_id, by="test")
        await _closed_with(tunnel, None)
    (row,) = await ended_sessions(env.identity, "tess")
    assert row.end_reason == "killed"


@pytest.mark.parametrize("listen", ["localhost:81", "127.0.0.1:1023"])
async def test_remote_forward_to_privileged_ports_is_refused(env: GatewayEnv, listen: str) -> None:
    key = await env.add_user("tina", "tunneler")
    assert key is not None
    result = await env.run(env.ssh_cmd(
        "tina", "true", key=key,
        options=["-o", "ExitOnForwardFailure=yes", "-R", f"{listen}:127.0.0.1:9"],
    ))  # fmt: skip
    assert result.returncode == 255
    assert b"remote port forwarding failed" in result.stderr, result.stderr


async def test_remote_forward_to_the_gateways_own_port_is_refused(env: GatewayEnv) -> None:
    key = await env.add_user("tina", "tunneler")
    assert key is not None
    result = await env.run(env.ssh_cmd(
        "tina", "true", key=key,
        options=["-o", "ExitOnForwardFailure=yes", "-R", f"127.0.0.1:{env.port}:127.0.0.1:9"],
    ))  # fmt: skip
    assert result.returncode == 255


async def test_a_crashed_boot_leaves_no_session_or_token_alive(env: GatewayEnv) -> None:
    """Another boot of the same gateway (what a restart after kill -9 is) ends the sessions the
    first left open, publishes their end, and their tokens stop verifying, once that first boot
    no longer beats. While it still beats, the new boot's start-up sweep spares them (it used
    to end them at once: a second replica given the same gateway id, or anyone holding that
    gateway's certificate, ended live sessions by claiming a new boot)."""
    key = await env.add_user("carl")
    assert key is not None

    def again() -> Gateway:
        return Gateway(
            settings=GatewaySettings(port=0, gateway_id="gw-test"),
            identity=env.identity,
            authz=env.authz,
            publisher=env.gateway._publisher,
            data_dir=env.data_dir,
        )

    async with _ssh(env, "carl", key, 'printf %s "$STOCKADE_TOKEN"; sleep 300') as shell:
        assert shell.stdout is not None
        token = (await asyncio.wait_for(shell.stdout.read(2000), 20)).decode()
        session_id = await _live(env, "carl")
        await env.identity.verify_token(token)
        replica = again()  # the same gateway id starting while the first boot still beats
        await replica.start()
        try:
            assert (await env.identity.get_session(session_id)).ended_at is None
            await env.identity.verify_token(token)
        finally:
            await replica.stop(grace=0)
        # kill -9 of the first boot: its beats stop (no last "stopping" one) and its last beat
        # ages past its timeout, which the restart finds
        beating = env.gateway.heartbeat._task
        assert beating is not None
        beating.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beating
        async with env.identity._store.transaction() as session:
            await session.execute(
                update(GatewayRow)
                .where(GatewayRow.boot_id == env.gateway.boot_id)
                .values(seen_at=datetime.now(UTC) - timedelta(seconds=60))
            )
        restarted = again()
        await restarted.start()
        try:
            info = await env.identity.get_session(session_id)
            assert info.end_reason == "crashed"
            with pytest.raises(TokenRejected):
                await env.identity.verify_token(token)
        finally:
            await restarted.stop(grace=0)


async def test_stop_ends_and_records_live_sessions(env: GatewayEnv) -> None:
    key = await env.add_user("sam")
    assert key is not None
    async with _ssh(env, "sam", key, "sleep 300") as shell:
        session_id = await _live(env, "sam")
        loop = asyncio.get_running_loop()
        started = loop.time()
        await env.gateway.stop(grace=0.5)
        assert loop.time() - started < 0.5 + 5
        await _closed_with(shell, b"the gateway is shutting down")
    info = await env.identity.get_session(session_id)
    assert info.end_reason == "gateway_stopped"

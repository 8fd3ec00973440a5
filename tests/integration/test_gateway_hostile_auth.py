"""Hostile clients against the gateway's authentication: each test is a client that misbehaves
on purpose, with an asyncssh client where the OpenSSH client cannot misbehave that way."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncssh
import pytest
from gateway.harness import GatewayEnv, gateway_env

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
async def env(tmp_path: Path, nats_url: str):  # type: ignore[no-untyped-def]
    async with gateway_env(tmp_path, nats_url) as env:
        yield env


class _SwitchUser(asyncssh.SSHClient):
    """Sends the public-key query as one user and, after PK_OK, the signed request as another
    (RFC 4252 lets every request name a new user). asyncssh's client keeps the username on the
    connection; the test swaps it right before the signed request goes out."""

    def __init__(self, switch_to: str) -> None:
        self.switch_to = switch_to

    def connection_made(self, conn: asyncssh.SSHClientConnection) -> None:
        send = conn.send_userauth_request

        async def send_switched(method: bytes, *args: bytes, key: Any = None, **kw: Any) -> None:
            if method == b"publickey" and key is not None:
                conn._username = self.switch_to  # the signed request names another user
            await send(method, *args, key=key, **kw)

        conn.send_userauth_request = send_switched  # type: ignore[method-assign]


async def _switch_login(env: GatewayEnv, key: Path, first: str, then: str) -> str | None:
    """Log in with ``key`` querying as ``first`` and signing as ``then``; the output of
    ``whoami``-like exec, or None when the gateway refused."""
    client_key = asyncssh.read_private_key(str(key))
    try:
        conn = await asyncssh.connect(
            "127.0.0.1",
            env.port,
            username=first,
            client_keys=[client_key],
            known_hosts=None,
            agent_path=None,
            password=None,
            kbdint_auth=False,
            client_factory=lambda: _SwitchUser(then),
            kex_algs=["curve25519-sha256"],
        )
    except (asyncssh.PermissionDenied, asyncssh.DisconnectError):
        return None
    async with conn:
        result = await conn.run("echo $STOCKADE_TOKEN | cut -c1-3; id -un", check=False)
        return f"{conn.get_extra_info('username')}:{result.exit_status}"


async def test_username_switch_after_pk_ok_is_refused(env: GatewayEnv) -> None:
    alice_key = await env.add_user("alice")
    await env.add_user("bob")
    assert alice_key is not None
    assert await _switch_login(env, alice_key, "alice", "bob") is None
    assert env.gateway.live_sessions == []
    await env.succeeded.settle()
    assert env.succeeded.matching(username="bob") == []


async def test_username_switch_into_an_admin_is_refused(env: GatewayEnv) -> None:
    mallory_key = await env.add_user("mallory")
    await env.add_user("root-ish", "admin")
    assert mallory_key is not None
    assert await _switch_login(env, mallory_key, "mallory", "root-ish") is None
    assert await _switch_login(env, mallory_key, "mallory", "mallory+root-ish") is None


async def test_username_switch_into_a_disabled_account_is_refused(env: GatewayEnv) -> None:
    key = await env.add_user("dora")
    await env.add_user("eve")
    await env.identity.set_disabled("eve", True)
    assert key is not None
    assert await _switch_login(env, key, "dora", "eve") is None


async def test_honest_login_still_works_with_the_same_client(env: GatewayEnv) -> None:
    key = await env.add_user("frank")
    assert key is not None
    assert await _switch_login(env, key, "frank", "frank") == "frank:0"

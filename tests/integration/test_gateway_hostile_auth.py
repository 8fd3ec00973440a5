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


async def _strangers(env: GatewayEnv, count: int) -> list[asyncssh.SSHKey]:
    return [asyncssh.generate_private_key("ssh-ed25519") for _ in range(count)]


async def test_key_probes_are_not_strikes(env: GatewayEnv) -> None:
    """An agent offering five other keys before the right one logs in, with no failure event."""
    key = await env.add_user("paula")
    assert key is not None
    keys = [*await _strangers(env, 5), asyncssh.read_private_key(str(key))]
    async with asyncssh.connect(
        "127.0.0.1", env.port, username="paula", client_keys=keys, known_hosts=None,
        agent_path=None, kbdint_auth=False, password=None,
    ) as conn:  # fmt: skip
        result = await conn.run("echo in", check=False)
    assert result.stdout == "in\n"
    await env.failed.settle()
    assert env.failed.matching(username="paula") == []


async def test_unknown_keys_end_in_one_strike(env: GatewayEnv) -> None:
    await env.add_user("quinn")
    with pytest.raises((asyncssh.PermissionDenied, asyncssh.DisconnectError)):
        await asyncssh.connect(
            "127.0.0.1", env.port, username="quinn", client_keys=await _strangers(env, 3),
            known_hosts=None, agent_path=None, kbdint_auth=False, password=None,
        )  # fmt: skip
    await env.failed.settle()
    events = env.failed.matching(username="quinn")
    assert [e["reason"] for e in events] == ["unknown_key"], events


@pytest.mark.parametrize("username", ["alice+zzzz", "nobody", "1alice", "Alice"])
async def test_unknown_targets_get_the_same_answer(env: GatewayEnv, username: str) -> None:
    """No early "unknown or malformed target": every refusal is the same Permission denied."""
    await env.add_user("alice")
    stranger = await _strangers(env, 1)
    with pytest.raises(asyncssh.PermissionDenied):
        await asyncssh.connect(
            "127.0.0.1", env.port, username=username, client_keys=stranger, known_hosts=None,
            agent_path=None, kbdint_auth=False, password=None,
        )  # fmt: skip


async def test_service_style_names_log_in(env: GatewayEnv) -> None:
    """A name identity accepts (``_svc``) can log in: one grammar for both."""
    key = await env.add_user("_svc")
    result = await env.run(env.ssh_cmd("_svc", "echo ok", key=key))
    assert result.stdout == b"ok\n", result.stderr


async def test_malformed_username_is_reported_as_such(env: GatewayEnv) -> None:
    key = await env.add_user("alice")
    result = await env.run(env.ssh_cmd("1alice", "true", key=key))
    assert result.returncode == 255
    await env.failed.settle()
    assert [e["reason"] for e in env.failed.matching(username="1alice")] == ["invalid_username"]

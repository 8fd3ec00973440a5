"""Logins through the gateway with the real OpenSSH client; failures read back from NATS."""

from __future__ import annotations

from pathlib import Path

import pytest
from gateway.harness import (
    CLEAN_ENV,
    GatewayEnv,
    ended_sessions,
    gateway_env,
    keygen,
    ssh_options,
)

from stockade.core.errors import TokenRejected

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
async def env(tmp_path: Path, nats_url: str):  # type: ignore[no-untyped-def]
    async with gateway_env(tmp_path, nats_url) as env:
        yield env


async def test_exec_prints_and_exit_status(env: GatewayEnv) -> None:
    key = await env.add_user("alice")
    result = await env.run(env.ssh_cmd("alice", "echo hi; exit 3", key=key))
    assert result.stdout == b"hi\n", result.stderr
    assert result.returncode == 3
    await env.succeeded.settle()
    assert len(env.succeeded.matching(username="alice", method="publickey")) == 1
    assert env.failed.matching(username="alice") == []


async def _one_failure(env: GatewayEnv, username: str) -> dict[str, object]:
    await env.failed.settle()
    events = env.failed.matching(username=username)
    assert len(events) == 1, events
    event = events[0]
    assert event["gateway_id"] == "gw-test"
    assert event["client_ip"] == "127.0.0.1"
    assert event["v"] == 1
    return event


async def test_unregistered_key_fails_once(env: GatewayEnv) -> None:
    await env.add_user("alice")
    stranger = keygen(env.tmp / "id_stranger")
    result = await env.run(env.ssh_cmd("alice", "true", key=stranger))
    assert result.returncode == 255
    event = await _one_failure(env, "alice")
    assert (event["reason"], event["method"]) == ("unknown_key", "publickey")


async def test_disabled_user_fails_once(env: GatewayEnv) -> None:
    key = await env.add_user("bob")
    await env.identity.set_disabled("bob", True)
    result = await env.run(env.ssh_cmd("bob", "true", key=key))
    assert result.returncode == 255
    assert (await _one_failure(env, "bob"))["reason"] == "user_disabled"


async def test_key_of_another_user_fails_once(env: GatewayEnv) -> None:
    await env.add_user("carol")
    dave_key = await env.add_user("dave")
    result = await env.run(env.ssh_cmd("carol", "true", key=dave_key))
    assert result.returncode == 255
    assert (await _one_failure(env, "carol"))["reason"] == "key_not_owned"


async def test_unknown_user_fails_once(env: GatewayEnv) -> None:
    stranger = keygen(env.tmp / "id_stranger")
    result = await env.run(env.ssh_cmd("nobody-here", "true", key=stranger))
    assert result.returncode == 255
    assert (await _one_failure(env, "nobody-here"))["reason"] == "unknown_user"


def _askpass(env: GatewayEnv, password: str) -> dict[str, str]:
    script = env.tmp / "askpass.sh"
    script.write_text(f"#!/bin/sh\necho '{password}'\n")
    script.chmod(0o700)
    return {**CLEAN_ENV, "SSH_ASKPASS": str(script), "SSH_ASKPASS_REQUIRE": "force"}


_PASSWORD_ONLY = (
    "-o", "PreferredAuthentications=password", "-o", "PubkeyAuthentication=no",
    "-o", "NumberOfPasswordPrompts=1",
)  # fmt: skip


async def test_wrong_password_fails_once_and_right_one_works(env: GatewayEnv) -> None:
    await env.add_user("erin", key=False)
    await env.identity.set_password("erin", "correct horse battery")
    cmd = ["ssh", *ssh_options(env.tmp / "kh"), "-p", str(env.port), *_PASSWORD_ONLY]
    bad = await env.run([*cmd, "erin@127.0.0.1", "true"], env=_askpass(env, "wrong"))
    assert bad.returncode == 255
    event = await _one_failure(env, "erin")
    assert (event["reason"], event["method"]) == ("bad_password", "password")
    good = await env.run(
        [*cmd, "erin@127.0.0.1", "echo in"], env=_askpass(env, "correct horse battery")
    )
    assert good.stdout == b"in\n", good.stderr
    await env.failed.settle()
    assert len(env.failed.matching(username="erin")) == 1


async def test_target_workspace_and_unknown_workspace(env: GatewayEnv) -> None:
    key = await env.add_user("frank")
    await env.identity.add_workspace("ws2", owner="frank")
    result = await env.run(env.ssh_cmd("frank+ws2", "echo $STOCKADE_WORKSPACE", key=key))
    assert result.stdout == b"ws2\n", result.stderr
    result = await env.run(env.ssh_cmd("frank+nope", "true", key=key))
    assert result.returncode == 255
    assert (await _one_failure(env, "frank"))["reason"] == "unknown_workspace"


async def test_session_env_token_and_registry(env: GatewayEnv) -> None:
    key = await env.add_user("gina")
    result = await env.run(
        env.ssh_cmd("gina", 'echo $STOCKADE_API; printf %s "$STOCKADE_TOKEN"', key=key)
    )
    api, token = result.stdout.decode().split("\n", 1)
    assert api.startswith("https://")
    sessions = await ended_sessions(env.identity, "gina")
    assert len(sessions) == 1
    row = sessions[0]
    assert not row.live
    assert row.exit_status == 0
    assert row.bytes_out == len(result.stdout)
    # the token was bound to the session, which has ended: it no longer verifies
    with pytest.raises(TokenRejected):
        await env.identity.verify_token(token)

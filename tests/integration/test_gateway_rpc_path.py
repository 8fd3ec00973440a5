"""A login walks one straight line: one ``authenticate_key`` and one ``open_session`` round trip
to identity and one authz decision, plus one decision per channel request — counted through the
gRPC clients wired into the gateway (identity and authz served over mutual TLS)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import asyncssh
import pytest
from gateway.harness import GatewayEnv, ended_sessions, gateway_env

from stockade.authz import Authorizer, AuthzAPI
from stockade.identity import IdentityAPI, IdentityService
from stockade.rpc import AuthzClient, IdentityClient

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
async def env(tmp_path: Path, nats_url: str) -> AsyncIterator[GatewayEnv]:
    async with gateway_env(tmp_path, nats_url, rpc=True) as env:
        yield env


async def test_one_login_costs_two_identity_calls_and_one_decision(env: GatewayEnv) -> None:
    key = await env.add_user("lena")
    result = await env.run(env.ssh_cmd("lena", "echo one", key=key))
    assert result.stdout == b"one\n", result.stderr
    await ended_sessions(env.identity, "lena")
    calls = dict(env.calls)
    calls.pop("identity.end_session", None)  # the session's end, after the login
    calls.pop("identity.end_stale_sessions", None)  # the gateway's start
    calls.pop("identity.heartbeat", None)  # the gateway's heartbeats
    assert calls == {
        "identity.authenticate_key": 1,
        "identity.open_session": 1,
        "authz.decide_async": 2,  # ssh.connect, then the exec request
    }, calls


async def test_each_channel_request_gets_its_own_decision(env: GatewayEnv) -> None:
    key = await env.add_user("lena")
    assert key is not None
    async with asyncssh.connect(
        "127.0.0.1", env.port, username="lena", client_keys=[str(key)], known_hosts=None,
        agent_path=None, kbdint_auth=False, password=None,
    ) as conn:  # fmt: skip
        for _ in range(3):
            assert (await conn.run("true", check=False)).exit_status == 0
    assert env.calls["identity.authenticate_key"] == 1
    assert env.calls["identity.open_session"] == 1
    assert env.calls["authz.decide_async"] == 1 + 3


def test_in_process_services_and_grpc_clients_satisfy_the_same_protocols() -> None:
    assert issubclass(IdentityService, IdentityAPI)
    assert issubclass(IdentityClient, IdentityAPI)
    assert issubclass(Authorizer, AuthzAPI)
    assert issubclass(AuthzClient, AuthzAPI)

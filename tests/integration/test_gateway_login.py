"""Logins through the gateway with the real OpenSSH client; failures read back from NATS."""

from __future__ import annotations

from pathlib import Path

import pytest
from gateway.harness import GatewayEnv, gateway_env

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

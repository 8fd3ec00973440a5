"""Worktrace acceptance 5: policy answers an alert with ``kill_session``; the gateway holding the
session ends it, and the real OpenSSH client on the other side sees the message."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from gateway.harness import GatewayEnv, ended_sessions, eventually, gateway_env
from worktrace.conftest import exec_event, line

from stockade.bus import Bus
from stockade.workspace import DEFAULT_BLUEPRINT, render_workspace
from stockade.worktrace import AlertResponder, AnomalyConfig, Engine, load_rules

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
async def env(tmp_path: Path, nats_url: str) -> AsyncIterator[GatewayEnv]:
    async with gateway_env(tmp_path, nats_url) as env:
        yield env


async def test_kill_session_from_an_alert_ends_the_live_session(env: GatewayEnv) -> None:
    key = await env.add_user("alice")
    proc = await asyncio.create_subprocess_exec(
        *env.ssh_cmd("alice", "sleep 300", key=key),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        rows = await eventually(
            lambda: env.identity.list_sessions(active_only=True, username="alice")
        )
        assert rows, "the session never started"
        session_id = rows[0].session_id
        labels = {
            "stockade.dev/workspace": "alice",
            "stockade.dev/user": "alice",
            "stockade.dev/session": session_id,
        }
        raw = exec_event("/usr/bin/nsenter", "-t 1 -m -u -i -n bash", labels=labels)
        engine = Engine(load_rules(), anomaly=AnomalyConfig(enabled=False))
        (alert,) = engine.feed(line(raw))
        bus = await Bus.connect(env.nats_url, name="worktrace-kill-test")
        try:
            await AlertResponder(env.authz, bus).respond(alert)
        finally:
            await bus.close()
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode != 0
    assert b"session ended by Worktrace" in err, err
    (row,) = await ended_sessions(env.identity, "alice")
    assert row.end_reason.startswith("worktrace")


async def test_alert_from_a_workspace_pod_ends_every_session_in_that_workspace(
    env: GatewayEnv,
) -> None:
    """A Pod's alert names no session (one Pod serves them all, and the rendered Pod carries
    only workspace and owner labels): every session in that workspace ends, an admin's in it
    included, and a session in another workspace lives on."""
    alice = await env.add_user("alice")
    adm = await env.add_user("adm", "admin")
    bob = await env.add_user("bob")
    procs = [
        await asyncio.create_subprocess_exec(
            *env.ssh_cmd(user, "sleep 300", key=key),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for user, key in (("alice", alice), ("adm+alice", adm), ("bob", bob))
    ]
    try:
        for user in ("alice", "adm", "bob"):
            assert await eventually(
                lambda u=user: env.identity.list_sessions(active_only=True, username=u)
            ), f"{user}'s session never started"
        pod = render_workspace(DEFAULT_BLUEPRINT, workspace="alice", owner="alice", uid=200001)
        raw = exec_event("/usr/bin/nsenter", "-t 1 -a sh", labels=pod.pod["metadata"]["labels"])
        (alert,) = Engine(load_rules(), anomaly=AnomalyConfig(enabled=False)).feed(line(raw))
        assert alert.session.session_id is None
        bus = await Bus.connect(env.nats_url, name="worktrace-pod-kill-test")
        try:
            await AlertResponder(env.authz, bus).respond(alert)
        finally:
            await bus.close()
        for proc in procs[:2]:
            _, err = await asyncio.wait_for(proc.communicate(), 30)
            assert b"session ended by Worktrace" in err, err
        assert procs[2].returncode is None, "bob's session in his own workspace was ended"
        assert await env.identity.list_sessions(active_only=True, username="bob")
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    for user in ("alice", "adm"):
        (row,) = await ended_sessions(env.identity, user)
        assert row.end_reason.startswith("worktrace")

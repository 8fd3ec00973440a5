"""Removing a workspace ends the sessions running in it (the sibling of "disabling a user ended
nothing"): through the real OpenSSH client and NATS, a live shell in the removed workspace is
closed with a message, its session row ends (``workspace_removed``), its token stops verifying
at identity and at a broker that holds it in memory, and a session in another workspace is left
alone. With sandbox networking, the gateway drops the workspace's network namespace: the
workspace re-created under the same name (same uid, ``--reuse-home``) starts in a fresh one,
not next to what the old sessions left listening."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from gateway.harness import PORT_PROBE, GatewayEnv, eventually, gateway_env, one_shot_listener

from stockade.broker import LiveSessions
from stockade.bus import Bus
from stockade.core.errors import TokenRejected
from stockade.core.events import SessionKill
from stockade.core.settings import Settings
from stockade.workspace import UidAllocator, sandbox_netns
from tests.conftest import IN_CI

pytestmark = pytest.mark.timeout(180)


@contextlib.asynccontextmanager
async def _shell(env: GatewayEnv, user: str, key: Path) -> AsyncIterator[tuple[Any, str, str]]:
    """``user``'s live shell, with its session id and token (read from its environment)."""
    proc = await asyncio.create_subprocess_exec(
        *env.ssh_cmd(user, 'printf "%s\\n" "$STOCKADE_TOKEN"; sleep 300', key=key),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        token = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode().strip()
        rows = await eventually(lambda: env.identity.list_sessions(active_only=True, username=user))
        assert rows, f"{user}'s session never started"
        yield proc, str(rows[0].session_id), token
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_removing_a_workspace_ends_its_sessions_everywhere(
    tmp_path: Path, nats_url: str
) -> None:
    async with gateway_env(tmp_path, nats_url) as env:
        rita = await env.add_user("rita")
        otto = await env.add_user("otto")
        assert rita is not None
        assert otto is not None
        bus = await Bus.connect(nats_url, name="broker-test")
        broker = LiveSessions(env.identity, max_age=300)  # memory alone would keep it alive
        try:
            await broker.attach(bus)
            async with (
                _shell(env, "rita", rita) as (shell, session_id, token),
                _shell(env, "otto", otto) as (other, other_id, other_token),
            ):
                await broker.verify_token(token)  # held in the broker's memory from now on
                await env.identity.remove_workspace("rita")
                _, err = await asyncio.wait_for(shell.communicate(), 30)
                assert shell.returncode != 0
                assert b"workspace rita was removed" in err, err
                assert await eventually(lambda: session_id not in env.gateway.live_sessions)
                (row,) = await env.identity.list_sessions(username="rita")
                assert not row.live
                assert row.end_reason == "workspace_removed"
                with pytest.raises(TokenRejected):
                    await env.identity.verify_token(token)

                async def refused() -> bool:
                    try:
                        await broker.verify_token(token)
                    except TokenRejected:
                        return True
                    return False

                assert await eventually(refused)
                # the other workspace's session is untouched, its token still good
                assert other.returncode is None
                assert other_id in env.gateway.live_sessions
                await env.identity.verify_token(other_token)
                await broker.verify_token(other_token)
                assert [s.live for s in await env.identity.list_sessions(username="otto")] == [True]
        finally:
            await broker.detach()
            await bus.close()


def test_a_removal_kill_names_one_workspace_and_nothing_else() -> None:
    """ATTACK: a removal kill that also names a user or a label reads differently at each end
    (gateway, broker): malformed, refused where it is parsed."""
    SessionKill(session_id="*", removed_workspace="w")
    for bad in (
        {"session_id": "s1", "removed_workspace": "w"},
        {"session_id": "*", "removed_workspace": "w", "username": "rita"},
        {"session_id": "*", "removed_workspace": "w", "workspace_label": "w"},
        {"session_id": "*", "removed_workspace": ""},
    ):
        with pytest.raises(ValueError, match="removed_workspace"):
            SessionKill(**bad)


LISTENER = one_shot_listener(b"left behind")
PROBE = PORT_PROBE


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0 and not IN_CI, reason="network namespaces need root")
async def test_a_recreated_workspace_starts_in_a_fresh_network_namespace(
    tmp_path: Path, nats_url: str
) -> None:
    name = f"wsr{os.getpid()}"
    data_dir = tmp_path / "data"
    network = Settings().workspace.sandbox_network
    assert network  # the shipped default isolates workspaces
    left: asyncio.subprocess.Process | None = None
    netns = ""
    try:
        async with gateway_env(tmp_path, nats_url, sandbox_network=network) as env:
            key = await env.add_user(name)
            assert key is not None
            async with _shell(env, name, key) as (shell, session_id, _token):
                uid = UidAllocator(data_dir / "workspace-uids.json").known()[name]
                netns = sandbox_netns(name, data_dir, uid=uid)
                assert Path(f"/run/netns/{netns}").exists()  # noqa: ASYNC240
                # what an old session leaves listening in its workspace's namespace
                left = await asyncio.create_subprocess_exec(
                    "ip", "netns", "exec", netns, sys.executable, "-c", LISTENER,
                    stdout=asyncio.subprocess.PIPE,
                )  # fmt: skip
                assert left.stdout is not None
                port = int(await asyncio.wait_for(left.stdout.readline(), 10))
                await env.identity.remove_workspace(name)
                await asyncio.wait_for(shell.communicate(), 30)
                assert await eventually(lambda: session_id not in env.gateway.live_sessions)
            assert await eventually(lambda: not Path(f"/run/netns/{netns}").exists())
            # re-created for the same owner, same uid (what --reuse-home keeps)
            await env.identity.add_workspace(name, owner=name)
            result = await env.run(env.ssh_cmd(name, PROBE.format(port=port), key=key))
            assert UidAllocator(data_dir / "workspace-uids.json").known()[name] == uid
            out = result.stdout.decode()
            assert "done" in out, result.stderr.decode()
            assert "reached" not in out  # a fresh namespace: the old listener is out of reach
            # the removal replayed after a reconnect spares a later login, and its namespace
            async with _shell(env, name, key) as (shell, session_id, _token):
                before = datetime.now(UTC) - timedelta(hours=1)
                removal = SessionKill(session_id="*", removed_workspace=name)
                await env.gateway._apply_kill(removal, logged_in_before=before)
                assert session_id in env.gateway.live_sessions
                assert Path(f"/run/netns/{netns}").exists()  # noqa: ASYNC240
    finally:
        if left is not None and left.returncode is None:
            left.kill()
            await left.wait()
        if netns:
            delete = ["ip", "netns", "delete", netns]
            subprocess.run(delete, capture_output=True, check=False)  # noqa: ASYNC221

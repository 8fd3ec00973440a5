"""``workspace.sandbox_network`` through a real gateway: each ``local`` workspace in its own
network namespace, out of reach of the gateway host's loopback listeners (atk10: the setting
was read by nothing, and sandbox sessions kept the host's network whatever it said). On by
default (issue 10): the shipped default is what the isolated case runs with."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

import asyncssh
import pytest
from gateway.harness import PORT_PROBE, gateway_env, one_shot_listener, workspace_netns

from stockade.core.settings import Settings
from tests.conftest import IN_CI

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0 and not IN_CI, reason="network namespaces need root"),
]

LISTENER = one_shot_listener(b"inside the sandbox")
PROBE = PORT_PROBE


@pytest.mark.parametrize("isolated", [False, True], ids=["off", "default"])
async def test_sandbox_network_setting_keeps_the_host_loopback_out_of_reach(
    tmp_path: Path, nats_url: str, isolated: bool
) -> None:
    host = socket.create_server(("127.0.0.1", 0))
    name = f"nsu{os.getpid()}{int(isolated)}"
    network = Settings().workspace.sandbox_network if isolated else False
    try:
        async with gateway_env(tmp_path, nats_url, sandbox_network=network) as env:
            key = await env.add_user(name, "tunneler")
            result = await env.run(
                env.ssh_cmd(name, PROBE.format(port=host.getsockname()[1]), key=key)
            )
            if isolated:  # a forward enters the workspace's namespace (its own loopback)
                inside = await asyncio.create_subprocess_exec(
                    "ip", "netns", "exec", workspace_netns(name, tmp_path / "data"),
                    sys.executable, "-c", LISTENER,
                    stdout=asyncio.subprocess.PIPE,
                )  # fmt: skip
                assert inside.stdout is not None
                port = int(await asyncio.wait_for(inside.stdout.readline(), 10))
                async with asyncssh.connect(
                    "127.0.0.1", env.port, username=name, client_keys=[str(key)],
                    known_hosts=None,
                ) as conn:  # fmt: skip
                    reader, writer = await conn.open_connection("127.0.0.1", port)
                    assert await asyncio.wait_for(reader.read(100), 10) == b"inside the sandbox"
                    writer.close()
                    # ATTACK: -L to the host's 127.0.0.1 lands in the workspace's namespace
                    with pytest.raises(asyncssh.ChannelOpenError):  # not the host's loopback
                        await conn.open_connection("127.0.0.1", host.getsockname()[1])
                    with pytest.raises(asyncssh.ChannelOpenError):  # nor the gateway itself
                        await conn.open_connection("localhost", env.port)
                await inside.wait()
    finally:
        host.close()
        netns = ["ip", "netns", "delete", workspace_netns(name, tmp_path / "data")]
        subprocess.run(netns, capture_output=True, check=False)  # noqa: ASYNC221
    out = result.stdout.decode()
    assert "done" in out, result.stderr.decode()
    if isolated:
        assert "reached" not in out
    else:  # turned off, documented: sandbox sessions share the host's network
        assert "reached" in out

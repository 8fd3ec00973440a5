"""Recording, forwarding, agent forwarding, the ssh backend and bad input, with real OpenSSH."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from gateway.harness import (
    CLEAN_ENV,
    GatewayEnv,
    agent_listening,
    ended_sessions,
    gateway_env,
    keygen,
    ssh_options,
)

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
async def env(tmp_path: Path, nats_url: str) -> AsyncIterator[GatewayEnv]:
    async with gateway_env(tmp_path, nats_url, handshake_timeout=2.0) as env:
        yield env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_contractor_session_is_recorded_and_plays(env: GatewayEnv) -> None:
    key = await env.add_user("connie", "contractor")
    typed = b"echo typed-$((6*7))\nexit\n"
    result = await env.run(env.ssh_cmd("connie", key=key, options=["-tt"]), stdin=typed)
    assert b"typed-42" in result.stdout, result.stderr
    (row,) = await ended_sessions(env.identity, "connie")
    assert row.recording is not None
    cast = Path(row.recording)
    assert "typed-42" in await asyncio.to_thread(cast.read_text)
    asciinema = shutil.which("asciinema") or str(Path(sys.executable).parent / "asciinema")
    played = await asyncio.to_thread(
        subprocess.run,
        [asciinema, "play", "-s", "50", "-i", "0.1", str(cast)],
        capture_output=True,
        env=CLEAN_ENV,
        timeout=60,
        check=False,
    )
    assert played.returncode == 0, played.stderr
    assert b"typed-42" in played.stdout


async def test_contractor_sftp_refused_because_it_cannot_be_recorded(
    env: GatewayEnv,
) -> None:
    key = await env.add_user("carla", "contractor")
    sftp = await env.run(
        [
            "sftp", *ssh_options(env.tmp / "known_hosts"), "-P", str(env.port), "-i", str(key),
            "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "carla@127.0.0.1",
        ],
        stdin=b"ls\n",
    )  # fmt: skip
    assert sftp.returncode != 0
    assert b"cannot be recorded" in sftp.stderr, sftp.stderr
    rows = await ended_sessions(env.identity, "carla")  # the login is a session; sftp was refused
    assert [row.recording for row in rows] == [None]


async def test_developer_is_not_recorded(env: GatewayEnv) -> None:
    key = await env.add_user("devon")
    await env.run(env.ssh_cmd("devon", "true", key=key))
    (row,) = await ended_sessions(env.identity, "devon")
    assert row.recording is None


async def _echo_server() -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.read(100))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def _through_forward(env: GatewayEnv, user: str, key: Path, echo_port: int) -> bytes:
    local = _free_port()
    proc = await asyncio.create_subprocess_exec(
        *env.ssh_cmd(user, key=key, options=["-N", "-L", f"{local}:127.0.0.1:{echo_port}"]),
        stderr=asyncio.subprocess.PIPE,
        env=CLEAN_ENV,
    )
    try:
        for _ in range(100):
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", local)
                break
            except OSError:
                await asyncio.sleep(0.1)
        else:
            raise AssertionError("ssh -L never listened")
        try:
            writer.write(b"ping")
            await writer.drain()
            data = await asyncio.wait_for(reader.read(100), 20)
        except ConnectionResetError:  # the refused channel may reset the local socket
            data = b""
        writer.close()
        return data
    finally:
        proc.send_signal(signal.SIGTERM)
        await proc.wait()


async def test_local_forward_refused_for_developer_allowed_for_tunneler(
    tmp_path: Path, nats_url: str
) -> None:
    # The echo server can only live on loopback here, so this gateway allows loopback targets.
    server, echo_port = await _echo_server()
    async with (
        server,
        gateway_env(tmp_path, nats_url, forward_to_loopback=True) as env,
    ):
        dev = await env.add_user("dana")
        assert await _through_forward(env, "dana", dev, echo_port) == b""
        tun = await env.add_user("tina", "tunneler")
        assert await _through_forward(env, "tina", tun, echo_port) == b"ping"


async def test_forward_to_gateway_loopback_refused_by_default(env: GatewayEnv) -> None:
    """A tunneler may forward, but not into the gateway host's own services (NATS, database)."""
    server, echo_port = await _echo_server()
    async with server:
        tun = await env.add_user("tom", "tunneler")
        assert await _through_forward(env, "tom", tun, echo_port) == b""


async def test_remote_forward_only_on_loopback(env: GatewayEnv) -> None:
    tun = await env.add_user("rita", "tunneler")
    port = _free_port()
    for spec, expected in ((f"0.0.0.0:{port}:127.0.0.1:9", 255), (f"{port}:127.0.0.1:9", 0)):
        result = await asyncio.create_subprocess_exec(
            *env.ssh_cmd(
                "rita", "true", key=tun, options=["-o", "ExitOnForwardFailure=yes", "-R", spec]
            ),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            env=CLEAN_ENV,
        )
        assert await asyncio.wait_for(result.wait(), 60) == expected, spec


def _privsep_dir() -> None:
    Path("/run/sshd").mkdir(exist_ok=True)


def _sshd_config(tmp: Path, port: int, authorized: Path) -> Path:
    host_key = keygen(tmp / "sshd_host_key")
    config = tmp / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\n"
        f"AuthorizedKeysFile {authorized}\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nUsePAM no\nPermitRootLogin yes\n"
        "StrictModes no\nPidFile none\nSubsystem sftp internal-sftp\nLogLevel ERROR\n"
        "AllowAgentForwarding yes\n"
    )
    return config


async def _start_sshd(tmp: Path, authorized: Path) -> tuple[asyncio.subprocess.Process, int]:
    port = _free_port()
    config = _sshd_config(tmp, port, authorized)
    proc = await asyncio.create_subprocess_exec(
        "/usr/sbin/sshd", "-D", "-e", "-f", str(config), env={"PATH": "/usr/bin:/bin"}
    )
    for _ in range(100):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return proc, port
        except OSError:
            await asyncio.sleep(0.05)
    raise AssertionError("sshd did not start")


async def test_agent_forwarding_end_to_end(env: GatewayEnv) -> None:
    _privsep_dir()
    key = await env.add_user("agnes")
    authorized = env.tmp / "authorized_keys"
    authorized.write_text(key.with_suffix(".pub").read_text())
    authorized.chmod(0o644)
    sshd, port = await _start_sshd(env.tmp, authorized)
    agent_sock = env.tmp / "agent.sock"
    agent = await asyncio.create_subprocess_exec(
        "ssh-agent", "-D", "-a", str(agent_sock), env=CLEAN_ENV, stdout=subprocess.DEVNULL
    )
    try:
        await agent_listening(agent_sock)
        agent_env = {**CLEAN_ENV, "SSH_AUTH_SOCK": str(agent_sock)}
        added = await env.run(["ssh-add", str(key)], env=agent_env)
        assert added.returncode == 0, added.stderr
        inner = (
            "ssh-add -l && ssh -F /dev/null -o UserKnownHostsFile=/dev/null "
            "-o StrictHostKeyChecking=no -o BatchMode=yes -o LogLevel=ERROR "
            f"-p {port} root@127.0.0.1 echo via-agent"
        )
        cmd = ["ssh", *ssh_options(env.tmp / "kh"), "-p", str(env.port), "-A",
               "-o", "BatchMode=yes", "agnes@127.0.0.1", inner]  # fmt: skip
        result = await env.run(cmd, env=agent_env)
        assert b"ED25519" in result.stdout, result.stderr
        assert result.stdout.strip().endswith(b"via-agent"), result.stderr
    finally:
        agent.terminate()
        await agent.wait()
        sshd.terminate()
        await sshd.wait()


async def test_ssh_backend_scp_and_sftp(env: GatewayEnv) -> None:
    _privsep_dir()
    key = await env.add_user("uma")
    authorized = env.tmp / "authorized_keys"
    authorized.write_text(env.gateway.upstream_public_key + "\n")
    authorized.chmod(0o644)
    sshd, port = await _start_sshd(env.tmp, authorized)
    try:
        await env.identity.add_workspace(
            "upstream1", owner="uma", backend="ssh",
            config={"upstream": f"127.0.0.1:{port}", "login": "root"},
        )  # fmt: skip
        target = "uma+upstream1"
        result = await env.run(env.ssh_cmd(target, "echo up; exit 7", key=key))
        assert (result.stdout, result.returncode) == (b"up\n", 7), result.stderr
        payload = env.tmp / "payload.bin"
        payload.write_bytes(os.urandom(300_000))
        remote = env.tmp / "remote.bin"
        base = [*ssh_options(env.tmp / "kh"), "-P", str(env.port), "-i", str(key),
                "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"]  # fmt: skip
        scp = await env.run(["scp", *base, str(payload), f"{target}@127.0.0.1:{remote}"])
        assert scp.returncode == 0, scp.stderr
        assert remote.read_bytes() == payload.read_bytes()
        fetched = env.tmp / "fetched.bin"
        sftp_base = [*ssh_options(env.tmp / "kh"), "-P", str(env.port), "-i", str(key),
                     "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-b", "-"]  # fmt: skip
        sftp = await env.run(
            ["sftp", *sftp_base, f"{target}@127.0.0.1"],
            stdin=f"get {remote} {fetched}\n".encode(),
        )
        assert sftp.returncode == 0, sftp.stderr
        assert fetched.read_bytes() == payload.read_bytes()
    finally:
        sshd.terminate()
        await sshd.wait()


async def test_garbage_and_stalled_handshakes_do_not_block_others(env: GatewayEnv) -> None:
    key = await env.add_user("olga")
    stalled = []
    for _attempt in range(5):  # TCP connected, SSH banner sent, then nothing
        _, writer = await asyncio.open_connection(
            "127.0.0.1", env.port, local_addr=("127.0.0.4", 0)
        )
        writer.write(b"SSH-2.0-stall\r\n")
        stalled.append(writer)
    # from other addresses than the user's: a source sending garbage is penalised (and stalls
    # time out), as OpenSSH's PerSourcePenalties would
    silent_reader, silent = await asyncio.open_connection(
        "127.0.0.1", env.port, local_addr=("127.0.0.5", 0)
    )
    garbage_reader, garbage = await asyncio.open_connection(
        "127.0.0.1", env.port, local_addr=("127.0.0.3", 0)
    )
    garbage.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + os.urandom(4096))
    result = await env.run(env.ssh_cmd("olga", "echo still-serving", key=key))
    assert result.stdout == b"still-serving\n", result.stderr
    assert await asyncio.wait_for(garbage_reader.read(), 20) is not None
    assert await asyncio.wait_for(silent_reader.read(), 20) is not None  # closed by the timeout
    for writer in [*stalled, silent, garbage]:
        writer.close()
    await env.failed.settle(rounds=40)
    reasons = [event["reason"] for event in env.failed.received]
    assert reasons.count("handshake_timeout") >= 6, reasons
    assert "protocol_error" in reasons, reasons
    assert env.failed.matching(username="olga") == []

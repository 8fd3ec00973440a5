"""Sandbox (``local``) sessions in their own network namespace, the default, reach the broker
through a unix socket made for each session: a real ``ssh`` login, a real broker on OpenBao
dev, the credential helpers in the workspace home.

Before (issue 10): ``workspace.sandbox_network`` was off by default, because nothing opened a
socket for local sessions and the helpers needed ``STOCKADE_TOKEN`` + ``STOCKADE_API`` over the
host's loopback; a developer shell reached every listener there (NATS, PostgreSQL, the broker).

Hostile sessions: one that tries another session's socket (same workspace, same uid), one that
keeps the path after its session ended, one that probes every listener of the gateway host and
of another workspace.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import secrets
import socket
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from broker.fixtures import openbao
from broker.harness import OpenBao, broker_settings
from gateway.harness import CLEAN_ENV, GatewayEnv, eventually, gateway_env, workspace_netns

from stockade.broker import BrokerServer, workspace_config
from stockade.bus import Bus
from stockade.core.settings import Settings
from stockade.helpers import static_helper
from stockade.tls import DevCA
from tests.conftest import IN_CI

__all__ = ["openbao"]

pytestmark = [
    pytest.mark.root,
    pytest.mark.timeout(180),
    pytest.mark.skipif(os.geteuid() != 0 and not IN_CI, reason="per-workspace uids need root"),
]

FILL = "printf 'protocol=https\\nhost=git.example.com\\n\\n' | git credential fill"
PROBE = """
import socket, sys
for target in sys.argv[1:]:
    host, _, port = target.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), 1).close()
        print("reached", target, flush=True)
    except OSError:
        pass
print("probed", len(sys.argv) - 1, flush=True)
"""
LISTEN = (
    'python3 -c \'import socket; s = socket.create_server(("127.0.0.1", 0));'
    ' print(s.getsockname()[1], flush=True); s.settimeout(30); s.accept()[0].sendall(b"x")\''
)


@dataclass
class Stack:
    gw: GatewayEnv
    broker: BrokerServer
    bao: OpenBao

    async def user(
        self, name: str, secret: str | None = None, *, static: bool = False, sudo: bool = False
    ) -> Path:
        """A developer whose workspace home is wired to the helpers (the static one or the
        Python fallback on the system interpreter) and, with ``secret``, a git password."""
        key = await self.gw.add_user(name, "developer", *(["sudoer"] if sudo else []))
        assert key is not None
        first = await self.gw.run(self.gw.ssh_cmd(name, "true", key=key))  # creates the home
        assert first.returncode == 0, first.stderr.decode()
        home = self.gw.data_dir / "workspaces" / name
        uid = home.stat().st_uid
        helper: dict[str, Any] = (
            {"helper_binary": static_helper()} if static else {"helper_python": "/usr/bin/python3"}
        )
        workspace_config(home, self.broker.url, self.broker.ca_path, owner=(uid, uid), **helper)
        if secret is not None:
            self.bao.kv_put(
                f"stockade/{name}/git/git.example.com", {"username": name, "password": secret}
            )
        return key

    async def ssh(self, name: str, key: Path, command: str) -> subprocess.CompletedProcess[bytes]:
        return await self.gw.run(self.gw.ssh_cmd(name, command, key=key))

    @contextlib.asynccontextmanager
    async def held(self, name: str, key: Path, command: str) -> AsyncIterator[Any]:
        """A session kept open while the block runs (its stdout readable line by line)."""
        proc = await asyncio.create_subprocess_exec(
            *self.gw.ssh_cmd(name, command, key=key),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            env=CLEAN_ENV,
        )
        try:
            yield proc
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()


@pytest.fixture
async def stack(tmp_path: Path, nats_url: str, openbao: OpenBao) -> AsyncIterator[Stack]:
    """A gateway whose ``local`` sessions run with the shipped ``workspace.sandbox_network``
    (so these tests fail while it is off) and get sockets of a real in-process broker."""
    opener: list[Any] = []

    async def open_socket(sid: str, token: str, path: Path, uid: int | None) -> Any:
        return await opener[0](sid, token, path, uid)

    network = Settings().workspace.sandbox_network
    names: list[str] = []
    async with gateway_env(
        tmp_path, nats_url, sandbox_network=network, session_sockets=open_socket
    ) as gw:
        bus = await Bus.connect(nats_url, name="broker-sandbox-sockets")
        broker = BrokerServer.from_settings(
            broker_settings(openbao),
            identity=gw.identity,
            authz=gw.authz,
            publisher=bus,
            ca=DevCA(tmp_path / "broker-ca"),
        )
        await broker.start()
        opener.append(broker.open_session_socket)
        original = gw.add_user

        async def add_user(name: str, *roles: str, key: bool = True) -> Path | None:
            names.append(name)
            return await original(name, *roles, key=key)

        gw.add_user = add_user  # type: ignore[method-assign]
        try:
            yield Stack(gw, broker, openbao)
        finally:
            await broker.stop()
            await bus.close()
            for name in names:
                netns = ["ip", "netns", "delete", workspace_netns(name, gw.data_dir)]
                subprocess.run(netns, capture_output=True, check=False)  # noqa: ASYNC221


def _name(prefix: str) -> str:
    return prefix + secrets.token_hex(3)


@pytest.mark.parametrize("static", [False, True], ids=["python-helper", "static-helper"])
async def test_git_credential_fill_through_the_socket_without_a_token(
    stack: Stack, static: bool
) -> None:
    name, secret = _name("sk"), "pw-" + secrets.token_urlsafe(12)
    key = await stack.user(name, secret, static=static)
    result = await stack.ssh(
        name,
        key,
        f"{FILL}; echo token=${{STOCKADE_TOKEN:-none}}; env | grep -c STOCKADE_TOKEN;"
        ' test -S "$STOCKADE_CREDENTIAL_SOCKET" && echo socket=$STOCKADE_CREDENTIAL_SOCKET',
    )
    out = result.stdout.decode()
    assert f"password={secret}" in out, result.stderr.decode()
    assert "token=none\n0\n" in out  # nothing of the session token in the environment
    socket_path = out.rpartition("socket=")[2].strip()
    assert socket_path
    # the session ended: its socket went with it
    assert await eventually(lambda: not os.path.exists(socket_path))


def _host_listeners() -> list[str]:
    """Every TCP listener of the gateway host (``/proc/net/tcp`` and ``tcp6``), as targets a
    process inside a sandbox would try: the wildcard as the loopback."""
    targets: set[str] = set()
    for table, family in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 6)):
        with contextlib.suppress(FileNotFoundError), open(table) as fh:
            for line in fh.readlines()[1:]:
                fields = line.split()
                if fields[3] != "0A":  # LISTEN
                    continue
                hex_ip, hex_port = fields[1].split(":")
                raw = bytes.fromhex(hex_ip)
                # the kernel prints each 32-bit word in host (little-endian) order
                raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                ip = ipaddress.ip_address(raw)
                if ip.is_unspecified:
                    ip = ipaddress.ip_address("127.0.0.1" if family == 4 else "::1")
                host = str(ip) if family == 4 else f"[{ip}]"
                targets.add(f"{host}:{int(hex_port, 16)}")
    return sorted(targets)


async def test_a_developer_shell_reaches_no_listener_of_the_host(stack: Stack) -> None:
    name = _name("lp")
    key = await stack.user(name)
    targets = _host_listeners()
    gateway = f"127.0.0.1:{stack.gw.port}"
    broker = f"127.0.0.1:{stack.broker.port}"
    assert {gateway, broker} <= set(targets)  # the enumeration sees Stockade's own listeners
    script = stack.gw.tmp / "probe.py"
    script.write_text(PROBE)
    script.chmod(0o644)
    command = "python3 -c " + _quote(PROBE) + " " + " ".join(targets)
    host_side = subprocess.run(  # noqa: ASYNC221 - the same probe, run on the host: it works
        ["python3", str(script), gateway], capture_output=True, text=True, check=False
    )
    assert f"reached {gateway}" in host_side.stdout
    result = await stack.ssh(name, key, command)
    out = result.stdout.decode()
    assert f"probed {len(targets)}" in out, result.stderr.decode()
    assert [line for line in out.splitlines() if line.startswith("reached")] == []


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


async def test_workspaces_do_not_reach_each_others_listeners(stack: Stack) -> None:
    ann, ben = _name("wa"), _name("wb")
    ann_key, ben_key = await stack.user(ann), await stack.user(ben)
    async with stack.held(ann, ann_key, LISTEN) as listener:
        assert listener.stdout is not None
        port = int(await asyncio.wait_for(listener.stdout.readline(), 20))
        probe = "python3 -c " + _quote(PROBE) + f" 127.0.0.1:{port}"
        theirs = (await stack.ssh(ben, ben_key, probe)).stdout.decode()
        assert "probed 1" in theirs
        assert "reached" not in theirs
        # the listener is real: ann's next session, in the same workspace namespace, gets it
        mine = (await stack.ssh(ann, ann_key, probe)).stdout.decode()
        assert f"reached 127.0.0.1:{port}" in mine


async def test_another_sessions_socket_is_out_of_reach_even_in_the_same_workspace(
    stack: Stack,
) -> None:
    name, secret = _name("ss"), "pw-" + secrets.token_urlsafe(12)
    key = await stack.user(name, secret)
    async with stack.held(name, key, "echo $STOCKADE_CREDENTIAL_SOCKET; sleep 60") as first:
        assert first.stdout is not None
        theirs = (await asyncio.wait_for(first.stdout.readline(), 20)).decode().strip()
        assert theirs.endswith(".sock")
        assert Path(theirs).is_socket()  # noqa: ASYNC240 - alive, owned by the same uid
        result = await stack.ssh(
            name,
            key,
            f"ls -A $(dirname {theirs}) 2>&1; echo mine=$STOCKADE_CREDENTIAL_SOCKET;"
            f" (export STOCKADE_CREDENTIAL_SOCKET={theirs}; {FILL} 2>&1); echo; {FILL}",
        )
    out = result.stdout.decode()
    mine = out.partition("mine=")[2].splitlines()[0]
    assert mine
    assert mine != theirs
    assert "Permission denied" in out  # the socket directory is not listable
    assert "cannot reach the broker" in out  # their socket is not there
    assert out.count(f"password={secret}") == 1  # the session's own socket still works


async def test_a_socket_is_gone_when_its_session_ends(stack: Stack) -> None:
    name, secret = _name("se"), "pw-" + secrets.token_urlsafe(12)
    key = await stack.user(name, secret)
    result = await stack.ssh(name, key, "echo $STOCKADE_CREDENTIAL_SOCKET")
    path = result.stdout.decode().strip()
    assert path.endswith(".sock"), result.stderr.decode()
    assert await eventually(lambda: not os.path.exists(path))
    with socket.socket(socket.AF_UNIX) as probe, pytest.raises(FileNotFoundError):
        probe.connect(path)  # even root on the host finds nothing to ask


async def test_an_admin_in_someone_elses_workspace_gets_no_socket(stack: Stack) -> None:
    """The admin's session runs as the owner's uid (who could ptrace it): no socket is opened
    for it and no token is left in its place (:func:`~stockade.workspace.shared_session`)."""
    owner, secret = _name("ow"), "pw-" + secrets.token_urlsafe(12)
    await stack.user(owner, secret)
    admin_key = await stack.gw.add_user(_name("ad"), "admin")
    assert admin_key is not None
    admin = admin_key.name.removeprefix("id_")
    stack.bao.kv_put(f"stockade/{admin}/git/git.example.com", {"username": "a", "password": "x"})
    result = await stack.ssh(
        f"{admin}+{owner}",
        admin_key,
        f"{FILL} 2>&1; echo sock=${{STOCKADE_CREDENTIAL_SOCKET:-none}}"
        " token=${STOCKADE_TOKEN:-none}; id -u",
    )
    out = result.stdout.decode()
    assert "sock=none token=none" in out, result.stderr.decode()
    assert "password=" not in out
    owner_uid = (stack.gw.data_dir / "workspaces" / owner).stat().st_uid
    assert out.split()[-1] == str(owner_uid)  # it did run in the owner's workspace


async def test_a_sudo_session_reaches_its_socket_from_its_user_namespace(stack: Stack) -> None:
    """The ``sudo`` obligation makes the session root of its own user namespace (and the
    sandbox's seccomp filter lets exactly that through); the broker still sees the workspace's
    uid on the socket (``SO_PEERCRED`` is mapped back) and answers."""
    name, secret = _name("su"), "pw-" + secrets.token_urlsafe(12)
    key = await stack.user(name, secret, sudo=True)
    result = await stack.ssh(name, key, f"id -u; {FILL}")
    out = result.stdout.decode()
    assert out.startswith("0\n"), result.stderr.decode()
    assert f"password={secret}" in out

"""The per-session socket proxy decides on a connection only once the session leader is known.

The client runs in a real pid namespace (``unshare --pid --fork``), where it is pid 1, just as a
session leader is inside its container; the proxy checks its ancestry through ``/proc``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from stockade.workspace._podman import _Pod, _SessionProxy

pytestmark = pytest.mark.root

_CLIENT = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
print("connected", flush=True)
print(s.recv(100).decode() or "refused", flush=True)
"""


@pytest.fixture
def pod() -> Iterator[_Pod]:
    listener = socket.socket(socket.AF_UNIX)
    yield _Pod(
        workspace="w",
        name="p",
        uid=os.getuid(),
        owner="o",
        home="/home/o",
        layout=None,  # type: ignore[arg-type]  # not read by the proxy
        listener=listener,
        container_pid=os.getpid(),  # the client's chain reaches pid 1 in its namespace first
    )
    listener.close()


async def _serve_target(path: Path) -> asyncio.AbstractServer:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"credential")
        await writer.drain()
        writer.close()

    return await asyncio.start_unix_server(serve, path=str(path))


async def _client_in_namespace(
    proxy: _SessionProxy, leader: int | None
) -> tuple[list[str], asyncio.subprocess.Process]:
    client = await asyncio.create_subprocess_exec(
        "unshare", "--pid", "--fork", sys.executable, "-c", _CLIENT, str(proxy.path),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert client.stdout is not None
    first = await asyncio.wait_for(client.stdout.readline(), 10)
    assert first.strip() == b"connected"
    proxy.pod.container_pid = client.pid  # unshare: the parent of pid 1, as the agent is
    await asyncio.sleep(0.2)  # the proxy has accepted and is deciding
    proxy.set_leader(leader)
    rest = await asyncio.wait_for(client.stdout.read(), 10)
    await client.wait()
    return [first.decode().strip(), rest.decode().strip()], client


async def test_early_connection_waits_for_the_leader(tmp_path: Path, pod: _Pod) -> None:
    target = await _serve_target(tmp_path / "target.sock")
    proxy = _SessionProxy(tmp_path / "s.sock", str(tmp_path / "target.sock"), pod)
    await proxy.start()
    try:
        lines, _ = await _client_in_namespace(proxy, 1)
        assert lines == ["connected", "credential"]
    finally:
        await proxy.close()
        target.close()


async def test_session_that_never_started_refuses(tmp_path: Path, pod: _Pod) -> None:
    target = await _serve_target(tmp_path / "target.sock")
    proxy = _SessionProxy(tmp_path / "s.sock", str(tmp_path / "target.sock"), pod)
    await proxy.start()
    try:
        lines, _ = await _client_in_namespace(proxy, None)
        assert lines == ["connected", "refused"]
    finally:
        await proxy.close()
        target.close()


async def test_process_outside_the_session_is_refused(tmp_path: Path, pod: _Pod) -> None:
    target = await _serve_target(tmp_path / "target.sock")
    proxy = _SessionProxy(tmp_path / "s.sock", str(tmp_path / "target.sock"), pod)
    await proxy.start()
    try:
        proxy.set_leader(1)
        reader, writer = await asyncio.open_unix_connection(str(proxy.path))  # not in the tree
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()
    finally:
        await proxy.close()
        target.close()


async def test_impostor_with_the_leaders_pid_in_a_nested_namespace_is_refused(
    tmp_path: Path, pod: _Pod
) -> None:
    """Regression (atk10): a workspace session may create user and pid namespaces (Podman's
    default seccomp profile allows it); a process there whose pid in the nested namespace
    equals the session leader's (its ``NSpid``'s last field) passed the ancestry check, so any
    session of the workspace could use another's credential socket."""
    target = await _serve_target(tmp_path / "target.sock")
    proxy = _SessionProxy(tmp_path / "s.sock", str(tmp_path / "target.sock"), pod)
    await proxy.start()
    # the "container": sh is its pid 1 (the agent), sleep its pid 2 (the real leader); the
    # impostor is pid 2 of a namespace nested in it, outside the leader's tree
    client_py = tmp_path / "client.py"
    client_py.write_text(_CLIENT)
    inner = f"{sys.executable} {client_py} {proxy.path} & wait"
    script = f'sleep 30 & unshare --pid --fork sh -c "{inner}"; kill %1'
    client = await asyncio.create_subprocess_exec(
        "unshare", "--pid", "--fork", "sh", "-c", script, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert client.stdout is not None
        first = await asyncio.wait_for(client.stdout.readline(), 10)
        assert first.strip() == b"connected"
        children = await asyncio.to_thread(
            Path(f"/proc/{client.pid}/task/{client.pid}/children").read_text
        )
        proxy.pod.container_pid = int(children.split()[0])
        proxy.set_leader(2)
        rest = await asyncio.wait_for(client.stdout.readline(), 10)
        assert rest.strip() == b"refused"
    finally:
        with contextlib.suppress(ProcessLookupError):
            client.kill()
        await client.wait()
        await proxy.close()
        target.close()

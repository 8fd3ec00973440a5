"""The sandbox runtime (bubblewrap) keeps workspaces apart: own uid, own network namespace,
writable /tmp, and no silent fallback to running unsandboxed."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from stockade.core.errors import ToolMissing
from stockade.workspace import SandboxBackend, SessionSpec, guard_homes, sandbox_netns
from tests.conftest import IN_CI

IS_ROOT = os.geteuid() == 0
pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(not IS_ROOT and not IN_CI, reason="per-workspace uids need root"),
]


@pytest.fixture
async def backend(tmp_path: Path) -> AsyncIterator[SandboxBackend]:
    sandbox = SandboxBackend(  # noqa: S604 - the sessions' login shell
        root=tmp_path / "homes", data_dir=tmp_path, sandbox="auto", shell="/bin/sh", network=True
    )
    names = [f"sbx-{tmp_path.name}-{n}" for n in ("a", "b")]
    try:
        yield sandbox
    finally:
        for name in names:
            sandbox.remove_netns(name)


def _spec(
    backend: SandboxBackend, tmp: Path, ws: str, user: str, cmd: str, **kw: Any
) -> SessionSpec:
    return SessionSpec(
        session_id=os.urandom(6).hex(), username=user, workspace=f"sbx-{tmp.name}-{ws}",
        workspace_config={"owner": kw.pop("owner", user)}, command=cmd, **kw,
    )  # fmt: skip


async def _run(backend: SandboxBackend, spec: SessionSpec) -> str:
    work = await backend.open(spec)
    out = b""
    while chunk := await work.read_stdout():
        out += chunk
    await work.wait()
    await work.close()
    return out.decode()


async def test_own_uid_name_tmp_and_stderr(backend: SandboxBackend, tmp_path: Path) -> None:
    cmd = (
        "id -u; id -un; touch /tmp/x && echo tmp-ok; stat -c %a /tmp;"
        "echo e > /dev/stderr && echo stderr-ok; grep CapEff /proc/self/status"
    )
    a = (await _run(backend, _spec(backend, tmp_path, "a", "ann", cmd))).split("\n")
    b = (await _run(backend, _spec(backend, tmp_path, "b", "ben", cmd))).split("\n")
    assert a[0] != b[0]
    assert 0 not in {int(a[0]), int(b[0])}
    assert 65534 not in {int(a[0]), int(b[0])}
    assert a[1] == "ann"
    assert b[1] == "ben"
    assert "tmp-ok" in a
    assert "1777" in a
    assert "stderr-ok" in a
    assert "CapEff:\t0000000000000000" in a
    again = await _run(backend, _spec(backend, tmp_path, "a", "ann", "id -u"))
    assert again.strip() == a[0]  # stable


async def test_environ_theft_fails_across_workspaces(
    backend: SandboxBackend, tmp_path: Path
) -> None:
    secret = "sandbox-token-" + os.urandom(6).hex()
    holder = await backend.open(
        _spec(backend, tmp_path, "a", "ann", "sleep 30", env={"STOCKADE_TOKEN": secret})
    )
    await asyncio.sleep(0.3)
    thief = "cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n' | grep -c sandbox-token-; true"
    out = await _run(backend, _spec(backend, tmp_path, "b", "ben", thief))
    assert out.split()[0] == "0"
    assert secret not in out
    await holder.close()


async def test_admin_token_is_kept_out_of_a_shared_workspace(
    backend: SandboxBackend, tmp_path: Path
) -> None:
    sock_path = tmp_path / "cred.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(sock_path))
    try:
        out = await _run(
            backend,
            _spec(backend, tmp_path, "a", "root-admin", "echo t=$STOCKADE_TOKEN s=$STOCKADE_SOCKET",
                  owner="ann", env={"STOCKADE_TOKEN": "admin-secret"},
                  credential_socket=str(sock_path)),
        )  # fmt: skip
    finally:
        listener.close()
    assert "admin-secret" not in out
    # nor their credential socket: the owner runs as the same uid and plants what the
    # session runs (see the next test)
    assert "s=\n" in out, out


async def test_owner_planted_profile_catches_nothing_of_an_admin(
    backend: SandboxBackend, tmp_path: Path
) -> None:
    """Regression (atk10): ann's ``~/.profile`` runs in an admin's login shell in her
    workspace (same uid, same home); before, the admin's ``STOCKADE_TOKEN`` stayed in the
    environment whenever no credential socket came with the session (the gateway's ``local``
    backend never passes one), and the profile copied it into ann's home."""
    plant = (
        'echo "t=$STOCKADE_TOKEN s=$STOCKADE_SOCKET a=$SSH_AUTH_SOCK" > $HOME/stolen;echo planted'
    )
    await _run(backend, _spec(backend, tmp_path, "a", "ann", f"echo '{plant}' > $HOME/.profile"))
    agent_dir = tmp_path / "agent-dir"
    agent_dir.mkdir()
    agent = agent_dir / "agent.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(agent))
    try:
        spec = _spec(backend, tmp_path, "a", "root-admin", "", owner="ann",
                     env={"STOCKADE_TOKEN": "admin-secret"}, agent_path=str(agent))  # fmt: skip
        work = await backend.open(dataclasses.replace(spec, command=None))  # a login shell
        await work.write_stdin(b"exit\n")
        out = b""
        while chunk := await work.read_stdout():
            out += chunk
        await work.wait()
        await work.close()
    finally:
        listener.close()
    assert b"planted" in out  # the owner's profile did run in the admin's shell
    stolen = await _run(backend, _spec(backend, tmp_path, "a", "ann", "cat $HOME/stolen"))
    assert stolen.strip() == "t= s= a=", stolen
    assert agent.stat().st_uid == 0  # the admin's agent socket was not handed to ann's uid


async def test_a_planted_agent_link_chowns_nothing_of_the_host(
    backend: SandboxBackend, tmp_path: Path
) -> None:
    """Regression (atk10): the sessions of one SSH connection share its agent socket, in a
    directory bound writable into each sandbox. The first replaced the socket with a symlink
    to a root-only host file; opening the second chowned the path, as root, following the
    link: the file became the workspace uid's, and the session read it."""
    victim = Path("/var/tmp") / f"atk10-victim-{tmp_path.name}"
    victim.write_text("root only\n")
    victim.chmod(0o600)
    agent_dir = tmp_path / "agent-conn"
    agent_dir.mkdir()
    agent = agent_dir / "agent"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(agent))
    try:
        plant = f"rm -f $SSH_AUTH_SOCK; ln -s {victim} $SSH_AUTH_SOCK && echo planted"
        first = _spec(backend, tmp_path, "a", "ann", plant, agent_path=str(agent))
        assert "planted" in await _run(backend, first)
        second = _spec(backend, tmp_path, "a", "ann", f"cat {victim}", agent_path=str(agent))
        out = await _run(backend, second)
        owner = victim.stat().st_uid
    finally:
        listener.close()
        victim.unlink()
    assert owner == 0, "a host file was given to the workspace uid"
    assert "root only" not in out


async def test_host_loopback_unreachable_and_forwards_enter_the_namespace(
    backend: SandboxBackend, tmp_path: Path
) -> None:
    host = socket.create_server(("127.0.0.1", 0))
    port = host.getsockname()[1]
    try:
        probe = f"busybox nc -w 2 127.0.0.1 {port} </dev/null && echo reached || echo refused"
        out = await _run(backend, _spec(backend, tmp_path, "a", "ann", probe))
    finally:
        host.close()
    assert out.strip().endswith("refused")
    server = await backend.open(
        _spec(backend, tmp_path, "a", "ann", "echo in-the-sandbox | busybox nc -l -p 7071")
    )
    sock = None
    for _ in range(50):
        try:
            sock = await backend.open_connection_in(f"sbx-{tmp_path.name}-a", "127.0.0.1", 7071)
            break
        except ConnectionRefusedError:
            await asyncio.sleep(0.1)
    assert sock is not None
    reader, writer = await asyncio.open_connection(sock=sock)
    assert (await reader.read(100)).strip() == b"in-the-sandbox"
    writer.close()
    await server.close()


UNIX_PROBE = """
import socket, sys
for path in sys.argv[1:]:
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(path)
        print("reached", path)
    except OSError as exc:
        print("refused", path, exc.errno)
"""


async def test_host_unix_sockets_unreachable(backend: SandboxBackend, tmp_path: Path) -> None:
    """Regression (atk10): ``--ro-bind / /`` showed the host's unix sockets and a read-only
    mount does not stop ``connect``: a session reached PostgreSQL's ``/run/postgresql``
    socket (``local all all trust`` here), became its superuser and ran ``COPY ... TO
    PROGRAM`` on the host as ``postgres``. Sockets under the runtime directory and elsewhere
    on the host (here one in a 0755 directory outside /tmp) are hidden."""
    run_dir = Path("/run") / f"atk10-{tmp_path.name}"
    other_dir = Path("/var/tmp") / f"atk10-{tmp_path.name}"
    listeners = []
    try:
        for directory in (run_dir, other_dir):
            directory.mkdir(mode=0o755)
            listener = socket.socket(socket.AF_UNIX)
            listener.bind(str(directory / "svc.sock"))
            os.chmod(directory / "svc.sock", 0o777)  # noqa: S103 - as PostgreSQL's is
            listener.listen()
            listeners.append(listener)
        paths = [str(run_dir / "svc.sock"), str(other_dir / "svc.sock")]
        postgres = "/var/run/postgresql/.s.PGSQL.5432"
        if os.path.exists(postgres):  # noqa: ASYNC240 - one stat
            paths.append(postgres)
        probe = f"python3 -c '{UNIX_PROBE}' {' '.join(paths)}"
        out = await _run(backend, _spec(backend, tmp_path, "a", "ann", probe))
    finally:
        for listener in listeners:
            listener.close()
        for directory in (run_dir, other_dir):
            (directory / "svc.sock").unlink(missing_ok=True)
            with contextlib.suppress(FileNotFoundError):
                directory.rmdir()
    assert out.count("refused") == len(paths), out
    assert "reached" not in out


async def test_a_namespace_file_left_without_its_namespace_is_replaced(
    backend: SandboxBackend, tmp_path: Path
) -> None:
    """Regression (the README walkthrough, restarting ``make up``): ``ip netns add`` mounts the
    namespace in the mount namespace it runs in; when that one goes, an empty file stays in
    /run/netns, and every later session of the workspace failed in nsenter ("Invalid
    argument"). The leftover is replaced by a live namespace."""
    name = f"sbx-{tmp_path.name}-a"
    path = Path("/run/netns") / sandbox_netns(name, tmp_path, uid=backend.ids(name)[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()  # what a gone mount namespace leaves behind
    assert not os.path.ismount(path)  # noqa: ASYNC240
    out = await _run(backend, _spec(backend, tmp_path, "a", "ann", "echo inside"))
    assert out.strip() == "inside"
    assert os.path.ismount(path)  # noqa: ASYNC240


async def test_two_data_dirs_never_share_a_workspaces_network_namespace(
    backend: SandboxBackend, tmp_path: Path
) -> None:
    """Regression: network namespaces are global to the host and were named after the workspace
    alone, so a second Stockade (another data dir) on this host put its workspace of the same
    name into this one's namespace, where it reached this workspace's listeners."""
    other = SandboxBackend(  # noqa: S604 - the sessions' login shell
        root=tmp_path / "other" / "homes", data_dir=tmp_path / "other", sandbox="auto",
        shell="/bin/sh", network=True,
    )  # fmt: skip
    name = f"sbx-{tmp_path.name}-a"
    try:
        assert other.netns(name) != backend.netns(name)
        server = await backend.open(
            _spec(backend, tmp_path, "a", "ann", "echo mine | busybox nc -l -p 7072")
        )
        try:
            netns = sandbox_netns(name, tmp_path, uid=backend.ids(name)[0])
            inside = ["ip", "netns", "exec", netns, "ss", "-ltnH"]
            for _ in range(100):  # until the listener is up in this backend's namespace
                listening = subprocess.run(inside, capture_output=True, text=True, check=False)  # noqa: ASYNC221
                if ":7072 " in listening.stdout:
                    break
                await asyncio.sleep(0.05)
            assert ":7072 " in listening.stdout
            probe = "busybox nc -w 2 127.0.0.1 7072 </dev/null && echo reached || echo refused"
            out = await _run(other, _spec(other, tmp_path, "a", "eve", probe))
            assert out.strip().endswith("refused"), out
            sock = await backend.open_connection_in(name, "127.0.0.1", 7072)  # still there
            reader, writer = await asyncio.open_connection(sock=sock)
            assert (await reader.read(100)).strip() == b"mine"
            writer.close()
        finally:
            await server.close()
    finally:
        other.remove_netns(name)


async def test_a_purged_and_re_created_workspace_gets_a_new_network_namespace(
    backend: SandboxBackend, tmp_path: Path
) -> None:
    """Regression (atk10): the namespace was named after the workspace (and data dir) alone.
    Removing a workspace ends none of its sessions, and re-creating it for another owner with
    ``--purge`` gives the newcomer a new uid but put them in the old namespace: ann's session,
    still running, reached bob's listeners on the workspace's loopback (and he hers)."""
    name = f"sbx-{tmp_path.name}-a"
    old_netns = backend.netns(name)
    ann = await backend.open(
        _spec(backend, tmp_path, "a", "ann", "echo anns | busybox nc -l -p 7073")
    )
    try:
        for _ in range(100):  # until ann's listener is up
            listening = subprocess.run(  # noqa: ASYNC221
                ["nsenter", f"--net={old_netns}", "ss", "-ltnH"],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            if ":7073 " in listening.stdout:
                break
            await asyncio.sleep(0.05)
        assert ":7073 " in listening.stdout
        old_uid = backend.ids(name)[0]
        guard_homes(tmp_path, name, "bob", choice="purge", uids=backend.uids)
        assert backend.ids(name)[0] != old_uid  # a fresh uid for the newcomer
        probe = "busybox nc -w 2 127.0.0.1 7073 </dev/null || echo refused"
        out = await _run(backend, _spec(backend, tmp_path, "a", "bob", probe, owner="bob"))
        assert "anns" not in out, out
        assert out.strip().endswith("refused"), out
    finally:
        await ann.close()
        if old_netns is not None:
            subprocess.run(["ip", "netns", "delete", Path(old_netns).name], check=False)  # noqa: ASYNC221


async def test_a_handed_over_workspace_ends_its_former_holders_sessions(
    backend: SandboxBackend, tmp_path: Path
) -> None:
    """Regression (atk10): removing a workspace ends none of its sandbox sessions, and
    re-creating it for alice with ``--reuse-home`` keeps its uid and home. Mallory's session,
    still running, kept writing there as that uid (a ``~/.profile`` that runs in alice's
    logins, next to her credential socket). As the Podman runtime replaces a Pod started for
    another holder, the sandbox ends the former holder's sessions when the workspace's owner
    or uid changes."""
    plant = "sleep 3; echo 'echo owned' > $HOME/.profile"
    mallory = await backend.open(_spec(backend, tmp_path, "a", "mallory", plant))
    try:
        alice = await backend.open(_spec(backend, tmp_path, "a", "alice", "sleep 5"))
        status = await asyncio.wait_for(mallory.wait(), 10)
        await alice.close()
    finally:
        await mallory.close()
    assert status.signal is not None, status  # ended, not left to finish
    home = backend.home(f"sbx-{tmp_path.name}-a")
    assert not (home / ".profile").exists()  # nothing planted after the handover


async def test_tools_planted_in_the_home_never_run_for_the_sandbox(
    backend: SandboxBackend, tmp_path: Path
) -> None:
    """Regression (atk10): ``nsenter``, ``setpriv`` and ``unshare`` were bare names, found
    through the session's PATH, which begins with ``~/.stockade/bin``. A session wrote an
    ``nsenter`` there and the next session ran it as root on the host (outside the sandbox),
    and its ``setpriv`` as root inside it."""
    marker = tmp_path / "ran-as-root"
    fake = (
        f'#!/bin/sh\nid -u >> {marker}; id -u >> "$HOME/ran"\nexec /usr/bin/$(basename $0) "$@"\n'
    )
    plant = (
        "mkdir -p $HOME/.stockade/bin && cd $HOME/.stockade/bin &&"
        f" printf '{fake}' > nsenter && cp nsenter setpriv && cp nsenter unshare &&"
        " chmod 755 nsenter setpriv unshare && echo planted"
    )
    assert "planted" in await _run(backend, _spec(backend, tmp_path, "a", "ann", plant))
    for sudo in (False, True):
        out = await _run(backend, _spec(backend, tmp_path, "a", "ann", "id -u", sudo=sudo))
        assert out.strip() in {"0", str(backend.ids(f"sbx-{tmp_path.name}-a")[0])}, out
    assert not marker.exists(), "a tool from the home ran on the host"
    ran = await _run(backend, _spec(backend, tmp_path, "a", "ann", "cat $HOME/ran 2>/dev/null"))
    assert "0" not in ran.split(), "a tool from the home ran as root in the sandbox"


PTRACE = """
import ctypes, os, time
libc = ctypes.CDLL(None, use_errno=True)
child = os.fork()
if child == 0:
    time.sleep(10)
    os._exit(0)
attached = libc.ptrace(16, child, 0, 0)  # PTRACE_ATTACH to our own child: same uid, dumpable
print("ptrace", "attached" if attached == 0 else os.strerror(ctypes.get_errno()), flush=True)
os.kill(child, 9)
params = ctypes.create_string_buffer(120)
ring = libc.syscall(425, 8, params)  # io_uring_setup
print("io_uring", "made" if ring >= 0 else os.strerror(ctypes.get_errno()), flush=True)
"""
SECCOMP_PROBE = (
    f"python3 -c '{PTRACE}'; unshare -U -r true 2>/dev/null && echo userns-made"
    " || echo userns-refused; grep '^Seccomp:' /proc/self/status; id -u;"
    " printf 'x\\n' | sort | uniq; python3 -c 'import subprocess, threading;"
    ' t = threading.Thread(target=print, args=("thread",)); t.start(); t.join();'
    ' print(subprocess.run(["true"]).returncode)\''
)


async def test_seccomp_refuses_ptrace_and_namespaces(
    backend: SandboxBackend, tmp_path: Path
) -> None:
    """Regression (issue 10): the sandbox had no seccomp filter, so a session could ptrace
    any process of its workspace uid (another session's) and make user namespaces."""
    out = await _run(backend, _spec(backend, tmp_path, "a", "ann", SECCOMP_PROBE))
    lines = out.splitlines()
    assert "ptrace Operation not permitted" in lines, out
    assert "io_uring Operation not permitted" in lines, out  # regression (atk10)
    assert "userns-refused" in lines
    assert "Seccomp:\t2" in lines
    assert lines[-3:] == ["x", "thread", "0"]  # pipes, threads, fork and exec still work


async def test_seccomp_keeps_the_sudo_obligation_working(
    backend: SandboxBackend, tmp_path: Path
) -> None:
    spec = _spec(backend, tmp_path, "a", "ann", SECCOMP_PROBE, sudo=True)
    lines = (await _run(backend, spec)).splitlines()
    assert "0" in lines  # root of its own user namespace, as the obligation says
    assert "ptrace Operation not permitted" in lines
    assert "io_uring Operation not permitted" in lines
    assert "Seccomp:\t2" in lines
    assert lines[-3:] == ["x", "thread", "0"]


def test_auto_without_bubblewrap_refuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(ToolMissing, match="bubblewrap"):
        SandboxBackend(root=tmp_path, data_dir=tmp_path, sandbox="auto", shell="/bin/sh")  # noqa: S604

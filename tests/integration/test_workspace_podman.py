"""The Podman runtime against real rootful Podman (runc, vfs, cgroupfs): a Pod rendered from the
default blueprint, sessions entering it through the agent, and the boundaries around them.

Pods take ~3 s to remove, so the module shares one runtime and two workspaces across tests.
The image is built here from busybox-static plus a 20-line static unix-socket client (``ucat``)
for reaching the credential socket from inside; nothing comes from a registry.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from stockade.core.errors import BackendError, InvalidInput, PermissionDenied
from stockade.workspace import (
    DEFAULT_BLUEPRINT,
    Blueprint,
    PodmanRuntime,
    SessionSpec,
    build_busybox_image,
    guard_homes,
    object_name,
)
from stockade.workspace._podman import PodmanLayout
from stockade.workspace._volumes import mounted_at, unmount_below
from tests.conftest import IN_CI

IS_ROOT = os.geteuid() == 0
pytestmark = [
    pytest.mark.root,
    pytest.mark.serial,
    pytest.mark.skipif(not IS_ROOT and not IN_CI, reason="rootful Podman needs root"),
    pytest.mark.timeout(600),
]

UCAT_C = r"""
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
int main(int argc, char **argv) {
    struct sockaddr_un a = {0};
    a.sun_family = AF_UNIX;
    if (argc != 2 || strlen(argv[1]) >= sizeof a.sun_path) return 2;
    strcpy(a.sun_path, argv[1]);
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    if (connect(s, (struct sockaddr *)&a, sizeof a) < 0) return 1;
    char buf[4096];
    ssize_t n;
    while ((n = read(s, buf, sizeof buf)) > 0) write(1, buf, n);
    return 0;
}
"""


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("podman-ws")
    yield path
    if (path / "podman").is_dir():  # remove every Pod this module started, then the storage
        podman = PodmanRuntime(data_dir=path).podman
        podman.run_sync("pod", "rm", "--all", "--force", "--time", "0")
        unmount_below(path)  # the Pods' sized volumes (their loop devices go with them)
        runroot = podman.argv[podman.argv.index("--runroot") + 1]
        subprocess.run([*podman.argv, "system", "reset", "--force"], env=podman.env, check=False)
        shutil.rmtree(runroot, ignore_errors=True)
    shutil.rmtree(path / "podman" / "root", ignore_errors=True)


@pytest.fixture(scope="module")
def image(data_dir: Path) -> str:
    """The workspace image, built once per module from busybox-static and ``ucat``."""
    source = data_dir / "ucat.c"
    source.write_text(UCAT_C)
    ucat = data_dir / "ucat"
    subprocess.run(["gcc", "-static", "-O2", "-o", str(ucat), str(source)], check=True)
    runtime = PodmanRuntime(data_dir=data_dir)
    tag = DEFAULT_BLUEPRINT.effective_image
    build_busybox_image(runtime.podman, data_dir / "rootfs", tag, extra={"ucat": ucat})
    return tag


@pytest.fixture
async def runtime(data_dir: Path, image: str) -> AsyncIterator[PodmanRuntime]:
    rt = PodmanRuntime(data_dir=data_dir)
    try:
        yield rt
    finally:
        await rt.close()


def _spec(workspace: str, user: str, command: str | None, **kw: Any) -> SessionSpec:
    return SessionSpec(
        session_id=kw.pop("session_id", f"{workspace}-{user}-{os.urandom(4).hex()}"),
        username=user,
        workspace=workspace,
        workspace_config={"owner": kw.pop("owner", user)},
        command=command,
        **kw,
    )


async def _run(rt: PodmanRuntime, spec: SessionSpec) -> tuple[str, str, Any]:
    work = await rt.open(spec)
    out, err = b"", b""
    while chunk := await work.read_stdout():
        out += chunk
    while chunk := await work.read_stderr():
        err += chunk
    status = await work.wait()
    await work.close()
    return out.decode(), err.decode(), status


async def test_default_blueprint_pod_is_least_privilege(runtime: PodmanRuntime) -> None:
    script = (
        "id -u; grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status;"
        "touch /probe 2>/dev/null && echo root-writable || echo root-readonly;"
        "touch $HOME/f && echo home-writable; touch /tmp/f && echo tmp-writable;"
        "stat -c %a /tmp; echo to-stderr > /dev/stderr; echo to-stdout > /dev/stdout;"
        "whoami; echo $USER $LOGNAME $HOME $SHELL; echo $SSH_CONNECTION; echo $SSH_CLIENT;"
        "ulimit -n; ls /proc/1/fd >/dev/null 2>&1 && echo agent-open || echo agent-closed;"
        "kill -TERM 1; sleep 0.2; kill -0 1 && echo agent-alive; exit 7"
    )
    spec = _spec("alpha", "alice", script, client=("192.0.2.7", 50123, "127.0.0.1", 2222))
    out, err, status = await _run(runtime, spec)
    lines = out.splitlines()
    assert int(lines[0]) != 0
    assert "CapEff:\t0000000000000000" in lines
    assert "NoNewPrivs:\t1" in lines
    assert "Seccomp:\t2" in lines
    assert "root-readonly" in lines
    assert "home-writable" in lines
    assert "tmp-writable" in lines
    assert "1777" in lines
    assert "to-stdout" in lines
    assert err.strip() == "to-stderr"
    assert "alice" in lines
    assert "alice alice /home/workspace /bin/sh" in lines
    assert "192.0.2.7 50123 127.0.0.1 2222" in lines
    assert "192.0.2.7 50123 2222" in lines
    assert "1024" in lines
    assert "agent-closed" in lines  # the agent is not dumpable: other sessions' fds stay shut
    assert "agent-alive" in lines  # and a user cannot stop it
    assert status.code == 7


async def test_no_namespaces_mounts_or_keyrings_of_a_sessions_own(runtime: PodmanRuntime) -> None:
    """Regression (atk10): Podman's default seccomp profile lets anyone ``unshare``, ``clone``
    with namespace flags, ``mount`` and ``keyctl``; a session became root of its own user
    namespace (mounts, a wide kernel surface) and got pid namespaces where any pid, a session
    leader's included, can be had again. Kubernetes' RuntimeDefault refuses these without
    CAP_SYS_ADMIN, and so does the workspace's profile now."""
    script = (
        "unshare -U -r id -u 2>/dev/null; echo userns=$?;"
        "unshare -p -f true 2>/dev/null; echo pidns=$?;"
        "unshare -n true 2>/dev/null; echo netns=$?;"
        "unshare -m true 2>/dev/null; echo mntns=$?;"
        "mount -t tmpfs none $HOME 2>/dev/null; echo mount=$?;"
        "(sleep 0.1 & wait) && echo fork-ok"
    )
    out, _, _ = await _run(runtime, _spec("alpha", "alice", script))
    lines = out.split()
    assert "0" not in lines, out  # no `id -u` of a user namespace's root
    for name in ("userns", "pidns", "netns", "mntns", "mount"):
        assert f"{name}=0" not in lines, out
    assert "fork-ok" in lines  # plain fork and threads still work


async def test_pty_resize_signal_and_reuse(runtime: PodmanRuntime) -> None:
    first = await runtime.open(_spec("alpha", "alice", "true"))
    await first.wait()
    await first.close()
    pid = runtime._pods["alpha"].container_pid
    work = await runtime.open(
        _spec("alpha", "alice", None, term_type="xterm", term_size=(100, 30, 0, 0))
    )
    assert runtime._pods["alpha"].container_pid == pid  # the running Pod was reused
    await work.write_stdin(b"stty size; tty; echo $SSH_TTY\n")
    seen = b""
    while b"30 100" not in seen or b"/dev/tty" not in seen:
        seen += await asyncio.wait_for(work.read_stdout(), 10)
    work.resize(120, 40, 0, 0)
    await work.write_stdin(b"stty size\n")
    while b"40 120" not in seen:
        seen += await asyncio.wait_for(work.read_stdout(), 10)
    await work.write_stdin(b"exec sleep 60\n")
    await asyncio.sleep(0.3)
    work.signal("TERM")
    status = await asyncio.wait_for(work.wait(), 10)
    assert status.signal == "TERM"
    await work.close()


async def test_two_workspaces_cannot_see_each_other(runtime: PodmanRuntime) -> None:
    secret = "token-of-alice-" + os.urandom(8).hex()
    holder = await runtime.open(
        _spec("alpha", "alice", "echo $$ > $HOME/pid; echo mine > $HOME/alice-file; sleep 60",
              env={"STOCKADE_TOKEN": secret})
    )  # fmt: skip
    await asyncio.sleep(0.5)
    thief = (
        "cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n' | grep -c token-of-alice;"
        "ps -o pid,user,args | wc -l; ls /home/workspace; id -u;"
        "find / -name alice-file 2>/dev/null | wc -l"
    )
    out, _, _ = await _run(runtime, _spec("beta", "bob", thief))
    lines = out.split()
    assert lines[0] == "0"  # no environ anywhere holds alice's token
    assert secret not in out
    assert "alice-file" not in out
    assert lines[-1] == "0"
    alpha_uid = runtime._pods["alpha"].uid
    assert runtime._pods["beta"].uid != alpha_uid
    assert str(alpha_uid) not in lines
    holder.signal("KILL")
    await holder.close()


async def test_loopback_of_the_host_is_out_of_reach_and_forwards_leave_from_the_pod(
    runtime: PodmanRuntime,
) -> None:
    host_listener = socket.create_server(("127.0.0.1", 0))
    port = host_listener.getsockname()[1]
    try:
        probe = f"nc -w 2 127.0.0.1 {port} </dev/null && echo reached || echo refused"
        out, _, _ = await _run(runtime, _spec("alpha", "alice", probe))
        assert out.strip().endswith("refused")
    finally:
        host_listener.close()
    server = await runtime.open(_spec("alpha", "alice", "echo inside-the-pod | nc -l -p 7070"))
    sock = None
    for _ in range(50):
        try:
            sock = await runtime.open_connection_in("alpha", "127.0.0.1", 7070)
            break
        except ConnectionRefusedError:
            await asyncio.sleep(0.1)
    assert sock is not None
    reader, writer = await asyncio.open_connection(sock=sock)
    assert (await reader.read(100)).strip() == b"inside-the-pod"
    writer.close()
    await server.close()


async def test_credential_socket_reaches_its_session_only(
    runtime: PodmanRuntime, tmp_path: Path
) -> None:
    path = tmp_path / "cred.sock"

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"credential-for-this-session\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_unix_server(serve, path=str(path))
    try:
        out, _, _ = await _run(
            runtime, _spec("alpha", "alice", "ucat $STOCKADE_SOCKET", credential_socket=str(path))
        )
        assert out.strip() == "credential-for-this-session"
        # a second session of the same workspace (same uid) cannot use the first one's socket
        holder = await runtime.open(
            _spec("alpha", "alice", "echo $STOCKADE_SOCKET; sleep 30", credential_socket=str(path))
        )
        inner = (await asyncio.wait_for(holder.read_stdout(), 10)).decode().strip()
        out, _, _ = await _run(runtime, _spec("alpha", "alice", f"ucat {inner}; echo rc=$?"))
        assert "credential" not in out
        # and neither can a process on the host outside the session's tree
        host_path = runtime.layout("alpha").pub / inner.removeprefix("/run/stockade/")
        dir_fd = os.open(host_path.parent, os.O_RDONLY)
        try:
            short = f"/proc/self/fd/{dir_fd}/{host_path.name}"
            reader, writer = await asyncio.open_unix_connection(short)
        finally:
            os.close(dir_fd)
        assert await reader.read(100) == b""
        writer.close()
        await holder.close()
        # an admin in alice's workspace: her token is not placed in the environment at all,
        # and neither is a credential socket (alice runs as the same uid: she could ptrace the
        # admin's processes and connect through them)
        admin = (
            "echo token=$STOCKADE_TOKEN; echo $USER; grep -c ^root-admin: /etc/passwd;"
            "echo sock=$STOCKADE_SOCKET; ls -A /run/stockade/s/*/ | grep -c sock"
        )
        out, _, _ = await _run(
            runtime,
            _spec("alpha", "root-admin", admin, owner="alice",
                  env={"STOCKADE_TOKEN": "admins-token"}, credential_socket=str(path)),
        )  # fmt: skip
        assert "admins-token" not in out
        assert out.split()[1:3] == ["root-admin", "1"]  # their own name resolves
        assert out.split()[3:] == ["sock=", "0"]
    finally:
        server.close()


async def test_agent_forwarding_socket_is_mounted(runtime: PodmanRuntime, tmp_path: Path) -> None:
    agent = tmp_path / "agent" / "agent.sock"
    agent.parent.mkdir()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"forwarded-agent\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_unix_server(serve, path=str(agent))
    try:
        out, _, _ = await _run(
            runtime, _spec("alpha", "alice", "echo $SSH_AUTH_SOCK; ucat $SSH_AUTH_SOCK",
                           agent_path=str(agent))
        )  # fmt: skip
    finally:
        server.close()
    inner, reply = out.split()
    assert inner.startswith("/run/stockade/s/")
    assert reply == "forwarded-agent"


async def test_an_impostor_agent_is_refused(runtime: PodmanRuntime) -> None:
    """A host process that connects to the agent socket before the real agent is turned away
    (its pid is not the container's), and the real agent still links."""
    opening = asyncio.ensure_future(runtime.open(_spec("epsilon", "eve", "echo real")))
    path = runtime.layout("epsilon").socket
    for _ in range(500):
        if path.exists():
            break
        await asyncio.sleep(0.01)
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as impostor:  # closed on failure too
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            impostor.connect(f"/proc/self/fd/{dir_fd}/{path.name}")
        finally:
            os.close(dir_fd)
        impostor.send(b"H")
        work = await opening
        out = b""
        while chunk := await work.read_stdout():
            out += chunk
        await work.close()
        assert out.strip() == b"real"
        impostor.setblocking(False)
        loop = asyncio.get_running_loop()
        assert await asyncio.wait_for(loop.sock_recv(impostor, 16), 10) == b""


async def test_a_restarted_runtime_reuses_the_running_pod(
    runtime: PodmanRuntime, data_dir: Path
) -> None:
    await _run(runtime, _spec("alpha", "alice", "true"))
    pid = runtime._pods["alpha"].container_pid
    await runtime.close()  # the gateway goes away; the Pod keeps running
    again = PodmanRuntime(data_dir=data_dir)
    try:
        out, _, _ = await _run(again, _spec("alpha", "alice", "echo back"))
        assert out.strip() == "back"
        assert again._pods["alpha"].container_pid == pid
    finally:
        await again.close()
    broken = PodmanRuntime(data_dir=data_dir, shell="/bin/no-such-shell")  # noqa: S604
    try:
        with pytest.raises(BackendError, match="could not start"):
            await broken.open(_spec("alpha", "alice", "true"))
    finally:
        await broken.close()


async def test_a_pod_failing_its_level_is_never_created(runtime: PodmanRuntime) -> None:
    claims_restricted = Blueprint(name="liar", podman=True, securityContext={"level": "restricted"})
    with pytest.raises(PermissionDenied, match="capabilities_restricted"):
        await runtime.open(
            _spec("gamma", "carol", "true", blueprint=claims_restricted.to_document())
        )
    state = await runtime.podman.run("pod", "ps", "--format", "{{.Name}}")
    assert object_name("gamma") not in state


async def test_idle_pods_stop(data_dir: Path, image: str) -> None:
    rt = PodmanRuntime(data_dir=data_dir, idle_timeout=0.0)
    try:
        out, _, _ = await _run(rt, _spec("delta", "dave", "echo up"))
        assert out.strip() == "up"
        assert await rt.stop_idle() == ["delta"]
        state = await rt.podman.run("pod", "ps", "--format", "{{.Name}}")
        assert object_name("delta") not in state
    finally:
        await rt.close()


@pytest.mark.slow
async def test_a_re_created_workspace_never_lands_in_its_former_holders_pod(
    data_dir: Path, image: str
) -> None:
    """Regression (atk10): workspace ``handover`` is removed and its name given to alice
    (``--purge`` releases its uid; ``--reuse-home`` keeps it): her login reused mallory's
    running Pod, with mallory's uid and what she left running there (a detached process that
    could ptrace alice's sessions and use their credential sockets), in this gateway and in
    the next one (the Pod was found running)."""
    leftover = "setsid sleep 311 </dev/null >/dev/null 2>&1 & id -u"
    look = "id -u; ps -o args | grep -c '[s]leep 311'"
    for restart in (False, True):
        runtime = PodmanRuntime(data_dir=data_dir)
        try:
            out, _, _ = await _run(runtime, _spec("handover", "mallory", leftover))
            old_uid = int(out.split()[0])
            runtime.uids.release("handover")  # stockade workspaces add --purge
            if restart:  # a new gateway finds the Pod running
                await runtime.close()
                runtime = PodmanRuntime(data_dir=data_dir)
            out, _, _ = await _run(runtime, _spec("handover", "alice", look))
            uid, seen = (int(word) for word in out.split())
            assert uid != old_uid
            assert seen == 0, "mallory's process is still there"
        finally:
            await runtime.stop("handover")
            await runtime.close()


def _small(size: str = "16Mi") -> dict[str, Any]:
    return {
        "name": "small-home",
        "storages": [{"name": "home", "mountPath": "/home/workspace", "home": True,
                      "size": size}],
    }  # fmt: skip


def _all_loops() -> list[str]:
    """``losetup -a``, one attached loop device a line."""
    out = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=True)
    return out.stdout.splitlines()


def _loops_under(path: Path) -> list[str]:
    """Loop devices (``losetup -a``) whose backing file is under ``path``."""
    return [line for line in _all_loops() if str(path) in line]


def _loops_of(layout: PodmanLayout) -> list[str]:
    """Loop devices backed by one workspace's images (its claims and its Pod's emptyDirs)."""
    return _loops_under(layout.homes) + _loops_under(layout.runtime)


async def _released(layout: PodmanLayout) -> list[str]:
    """The workspace's loop devices still attached once its Pod's last mount is gone (the
    container's mount namespace may outlive ``pod rm`` by a moment)."""
    for _ in range(50):
        if not _loops_of(layout):
            return []
        await asyncio.sleep(0.1)
    return _loops_of(layout)


async def test_a_home_holds_no_more_than_its_claim(runtime: PodmanRuntime) -> None:
    """atk10: the blueprint's storage ``size`` was not enforced under Podman (homes and /tmp
    were plain host directories: a session could fill the gateway host's disk). Now a home
    holds its claim and no more, in bytes and in inodes; /tmp is bounded by its ``sizeLimit``
    (1Gi by default); hard links cannot carry data between them (separate filesystems); and
    the loop devices are released when the Pod stops."""
    script = (
        "dd if=/dev/zero of=$HOME/fill bs=1M count=40 2>/dev/null; echo rc=$?; rm $HOME/fill;"
        "i=0; while [ $i -lt 20000 ] && true > $HOME/f$i 2>/dev/null; do i=$((i+1)); done;"
        "echo files=$i; rm -f $HOME/f*;"
        "fallocate -l 1100M /tmp/big 2>/dev/null; echo tmpbig=$?; rm -f /tmp/big;"
        "fallocate -l 900M /tmp/ok; echo tmpok=$?; rm -f /tmp/ok;"
        "echo x > $HOME/h; ln $HOME/h /tmp/h 2>/dev/null; echo link1=$?;"
        "echo y > /tmp/t; ln /tmp/t $HOME/t 2>/dev/null; echo link2=$?;"
        "stat -c 'mode=%a uid=%u' $HOME; id -u"
    )
    workspace = "small"
    layout = runtime.layout(workspace)
    try:
        out, _, _ = await _run(runtime, _spec(workspace, "alice", script, blueprint=_small()))
        assert len(_loops_of(layout)) == 2  # the home's image and /tmp's
    finally:
        await runtime.stop(workspace)
    facts = dict(line.split("=", 1) for line in out.split() if "=" in line)
    assert {"rc", "files", "tmpbig", "tmpok", "link1", "link2", "mode"} <= facts.keys(), out
    assert facts["rc"] != "0", "40M written into a 16Mi home"
    assert 100 < int(facts["files"]) < 20000, "inodes are the image's, and bounded"
    assert facts["tmpbig"] != "0", "more than /tmp's 1Gi sizeLimit was allocated"
    assert facts["tmpok"] == "0"
    assert facts["link1"] != "0", "a hard link carried a home file into /tmp"
    assert facts["link2"] != "0", "a hard link carried a /tmp file into the home"
    assert facts["mode"] == "700"
    assert facts["uid"] == out.split()[-1]  # the uid's, as before
    image = layout.homes / f"{object_name(workspace, 'home')}.img"
    assert image.stat().st_blocks * 512 <= 16 << 20  # nothing reached the host beyond it
    assert await _released(layout) == []
    assert not (layout.homes / object_name(workspace, "home") / "h").exists()  # unmounted


async def test_a_home_that_cannot_be_mounted_keeps_the_pod_from_starting(
    runtime: PodmanRuntime,
) -> None:
    """Fail closed: a claim image that is no filesystem (or a host without loop devices) is a
    one-line error naming the field and what to fix, and no Pod is created."""
    workspace = "junk-home"
    homes = runtime.layout(workspace).homes
    homes.mkdir(parents=True, exist_ok=True)
    image = homes / f"{object_name(workspace, 'home')}.img"
    image.write_bytes(os.urandom(4096) * 4096)  # 16Mi of no filesystem at all
    try:
        with pytest.raises(BackendError) as caught:
            await runtime.open(_spec(workspace, "alice", "true", blueprint=_small()))
        message = str(caught.value)
        assert "\n" not in message
        assert message.startswith("storages[0].size: mount")
        assert "loop devices" in message
        state = await runtime.podman.run("pod", "ps", "--format", "{{.Name}}")
        assert object_name(workspace) not in state
        assert _loops_under(homes) == []
        assert mounted_at(homes / object_name(workspace, "home")) is None
    finally:
        shutil.rmtree(homes)


@pytest.mark.slow
async def test_a_home_persists_grows_never_shrinks_migrates_and_is_purged(
    data_dir: Path, image: str
) -> None:
    """The home's image across its life: a plain-directory home from before sized claims is
    migrated into it; its data survives a Pod stop/start and a new runtime (which finds the
    running Pod's home mounted and does not mount it twice); a claim that grows is resized, one
    that shrinks is refused naming the field; every stop releases the loop devices (no leak
    across start/stops); ``--purge`` removes the image."""
    workspace = "keeper"
    rt = PodmanRuntime(data_dir=data_dir)
    layout = rt.layout(workspace)
    home = layout.homes / object_name(workspace, "home")
    uid = rt.uids.uid(workspace)
    home.mkdir(parents=True)  # a home as the runtime left it before this change
    (home / "old-notes").write_text("kept\n")
    os.chown(home / "old-notes", uid, uid)
    os.chown(home, uid, uid)
    before = _all_loops()
    read = "cat $HOME/old-notes $HOME/marker 2>/dev/null; df -k $HOME | tail -1"
    try:
        out, _, _ = await _run(rt, _spec(workspace, "alice", f"echo m > $HOME/marker; {read}",
                                         blueprint=_small()))  # fmt: skip
        assert out.split()[:2] == ["kept", "m"]
        assert (mounted_at(home) or ("", ""))[1] == "ext4"
        assert not home.with_name(home.name + ".premigration").exists()
        await rt.stop(workspace)
        assert await _released(layout) == []
        assert mounted_at(home) is None

        await rt.close()
        rt = PodmanRuntime(data_dir=data_dir)  # a new gateway: the image is found again
        out, _, _ = await _run(rt, _spec(workspace, "alice", read, blueprint=_small()))
        assert out.split()[:2] == ["kept", "m"]
        await rt.close()  # this gateway goes away, the Pod keeps running
        rt = PodmanRuntime(data_dir=data_dir)
        out, _, _ = await _run(rt, _spec(workspace, "alice", read, blueprint=_small()))
        assert out.split()[:2] == ["kept", "m"]
        assert len(_loops_under(layout.homes)) == 1  # mounted once, never twice
        await rt.stop(workspace)
        assert await _released(layout) == []

        out, _, _ = await _run(rt, _spec(workspace, "alice", read, blueprint=_small("48Mi")))
        assert out.split()[:2] == ["kept", "m"]
        assert int(out.split()[3]) > 40 * 1024  # df's size in KiB: grown online
        await rt.stop(workspace)
        assert await _released(layout) == []
        with pytest.raises(InvalidInput, match=r"^storages\[0\]\.size: .*never shrink"):
            await rt.open(_spec(workspace, "alice", "true", blueprint=_small()))
        assert _loops_of(layout) == []
        assert set(_all_loops()) <= set(before)  # none leaked over four start/stops
    finally:
        await rt.stop(workspace)
        await rt.close()
    assert home.with_name(home.name + ".img").is_file()
    guard_homes(data_dir, workspace, "someone-else", choice="purge")  # workspaces add --purge
    assert not layout.homes.exists()
    assert _loops_of(layout) == []


async def test_forwards_enter_the_pods_namespace_even_when_its_pid_is_stale(
    runtime: PodmanRuntime,
) -> None:
    """Regression (atk10): forwards entered ``/proc/<container pid>/ns/net`` by the pid
    recorded when the agent connected; once the container exits that pid can name a host
    process (here: this one), and a forward to 127.0.0.1 then reached the gateway host's
    loopback. The namespace is now held open from the moment the agent connects."""
    await _run(runtime, _spec("alpha", "alice", "true"))
    host = socket.create_server(("127.0.0.1", 0))
    try:
        runtime._pods["alpha"].container_pid = os.getpid()  # the recorded pid, reused
        port = host.getsockname()[1]
        with pytest.raises(ConnectionRefusedError):  # the container's loopback: nobody there
            await runtime.open_connection_in("alpha", "127.0.0.1", port)
    finally:
        host.close()

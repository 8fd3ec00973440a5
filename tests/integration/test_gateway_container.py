"""Issue 10, acceptance 1 and 2 through the gateway's ``container`` backend: a real OpenSSH
``ssh`` login lands in a rootful-Podman container rendered from the default blueprint; the
broker's per-session socket reaches OpenBao from inside (``git credential fill`` through the
static helper), ``ssh -A`` and ``ssh -L`` work from the container, the gateway host's loopback is
out of reach, and two users' (and an admin's) sessions cannot see each other's secrets.

The image is busybox-static plus ``git`` and ``ssh-add`` with the shared libraries they need,
imported into a private Podman storage (no registry). Pods take ~3 s to remove, so the module
shares one Podman data dir: each test gets a fresh gateway, identity and broker, and Pods of
workspace names already seen are found running and reused.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import secrets
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from broker.fixtures import openbao
from broker.harness import OpenBao, broker_settings
from gateway.harness import CLEAN_ENV, GatewayEnv, agent_listening, gateway_env, ssh_options

from stockade.broker import BrokerServer, LiveSessions, VaultBackend, create_app
from stockade.bus import Bus
from stockade.gateway import ContainerBackend
from stockade.helpers import static_helper
from stockade.tls import DevCA
from stockade.workspace import DEFAULT_BLUEPRINT, PodmanRuntime, build_busybox_image
from stockade.workspace._volumes import unmount_below
from tests.conftest import IN_CI

__all__ = ["openbao"]

IS_ROOT = os.geteuid() == 0
pytestmark = [
    pytest.mark.root,
    pytest.mark.serial,
    pytest.mark.skipif(not IS_ROOT and not IN_CI, reason="rootful Podman needs root"),
    pytest.mark.timeout(300),
]

GIT_HOST = "git.example.test"


@pytest.fixture(scope="module")
def podman_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("gw-container")
    yield path
    if (path / "podman").is_dir():
        podman = PodmanRuntime(data_dir=path).podman
        podman.run_sync("pod", "rm", "--all", "--force", "--time", "0")
        unmount_below(path)  # the Pods' sized volumes: pod rm leaves them mounted
        runroot = podman.argv[podman.argv.index("--runroot") + 1]
        subprocess.run([*podman.argv, "system", "reset", "--force"], env=podman.env, check=False)
        shutil.rmtree(runroot, ignore_errors=True)
    shutil.rmtree(path / "podman" / "root", ignore_errors=True)


@pytest.fixture(scope="module")
def image(podman_dir: Path) -> str:
    tag = DEFAULT_BLUEPRINT.effective_image
    build_busybox_image(
        PodmanRuntime(data_dir=podman_dir).podman, podman_dir / "rootfs", tag,
        programs=[Path("/usr/bin/git"), Path("/usr/bin/ssh-add")],
    )  # fmt: skip
    return tag


@dataclass
class Env:
    gw: GatewayEnv
    bao: OpenBao
    broker: BrokerServer
    runtime: PodmanRuntime

    async def user(self, name: str, *roles: str, workspace: str | None = None) -> Path:
        key = await self.gw.add_user(name, *roles)
        assert key is not None
        if workspace is not None:
            await self.gw.identity.add_workspace(workspace, owner=name, backend="container")
        return key

    def secret(self, user: str) -> str:
        password = f"pw-{user}-" + secrets.token_hex(12)
        self.bao.kv_put(f"stockade/{user}/git/{GIT_HOST}", {"username": user, "password": password})
        return password


@pytest.fixture
async def env(
    tmp_path: Path, nats_url: str, openbao: OpenBao, podman_dir: Path, image: str
) -> AsyncIterator[Env]:
    helper = static_helper()
    assert helper is not None, "make venv builds the static helper"
    runtime = PodmanRuntime(data_dir=podman_dir, credential_helper=helper)
    bus = await Bus.connect(nats_url, name="gw-container-test")
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(bus.close)
        holder: dict[str, BrokerServer] = {}

        async def sockets(session_id: str, token: str, path: Path, uid: int | None) -> object:
            return await holder["broker"].open_session_socket(session_id, token, path, uid)

        backend = ContainerBackend(data_dir=tmp_path, runtime=runtime, sockets=sockets)
        stack.push_async_callback(backend.close)
        gw = await stack.enter_async_context(
            gateway_env(tmp_path, nats_url, extra_backends={"container": backend})
        )
        vault = VaultBackend(broker_settings(openbao).vault)
        sessions = LiveSessions(gw.identity)
        app = create_app(
            identity=sessions, authz=gw.authz, backends={"vault": vault}, publisher=bus
        )
        ca = DevCA(tmp_path / "broker-ca")
        broker = BrokerServer(
            app, tls=ca.issue("broker"), owned={"vault": vault}, sessions=sessions, bus=bus
        )
        await broker.start()
        stack.push_async_callback(broker.stop)
        holder["broker"] = broker
        yield Env(gw, openbao, broker, runtime)


FILL = (
    f"printf 'protocol=https\\nhost={GIT_HOST}\\n\\n' | GIT_TERMINAL_PROMPT=0 git credential fill"
)


async def test_acceptance_1_a_login_lands_in_a_least_privilege_container(env: Env) -> None:
    key = await env.user("alice", "tunneler", workspace="alice-box")
    password = env.secret("alice")
    host_listener = socket.create_server(("127.0.0.1", 0))
    host_ports = [
        host_listener.getsockname()[1],
        env.gw.port,
        env.broker.port,
        int(env.gw.nats_url.rpartition(":")[2]),
    ]
    probes = "".join(
        f"nc -w 2 127.0.0.1 {p} </dev/null && echo reached-{p} || echo refused-{p};"
        for p in host_ports
    )
    script = (
        "id -u; grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status;"
        "touch /probe 2>/dev/null && echo root-writable || echo root-readonly;"
        "touch $HOME/f && echo home-writable; touch /tmp/f && echo tmp-writable;"
        f"{FILL}; {probes} echo $USER $HOME; echo e > /dev/stderr && echo stderr-ok"
    )
    try:
        result = await env.gw.run(env.gw.ssh_cmd("alice+alice-box", script, key=key))
    finally:
        host_listener.close()
    out = result.stdout.decode()
    assert result.returncode == 0, result.stderr.decode()
    lines = out.splitlines()
    assert int(lines[0]) != 0
    assert "CapEff:\t0000000000000000" in lines
    assert "NoNewPrivs:\t1" in lines
    assert "Seccomp:\t2" in lines
    assert "root-readonly" in lines
    assert "home-writable" in lines
    assert "tmp-writable" in lines
    assert f"password={password}" in lines  # from OpenBao, through the session's socket
    assert "username=alice" in lines
    for port in host_ports:
        assert f"refused-{port}" in lines
    assert "alice /home/workspace" in lines
    assert "stderr-ok" in lines
    # the container runs the session: it is not the gateway host's uid namespace's root shell
    assert env.runtime._pods["alice-box"].container_pid > 0


async def test_agent_forwarding_into_the_container(env: Env, tmp_path: Path) -> None:
    key = await env.user("alice", workspace="alice-box")
    agent_sock = tmp_path / "agent.sock"
    agent = await asyncio.create_subprocess_exec(
        "ssh-agent", "-D", "-a", str(agent_sock), env=CLEAN_ENV, stdout=subprocess.DEVNULL
    )
    try:
        await agent_listening(agent_sock)
        client_env = {**CLEAN_ENV, "SSH_AUTH_SOCK": str(agent_sock)}
        added = await env.gw.run(["ssh-add", "-q", str(key)], env=client_env)
        assert added.returncode == 0, added.stderr
        listed = await env.gw.run(["ssh-keygen", "-lf", f"{key}.pub"])
        fingerprint = listed.stdout.decode().split()[1]
        # the login key comes from the agent too (IdentityAgent stays the agent)
        base = ["ssh", *ssh_options(env.gw.tmp / "known_hosts"), "-p", str(env.gw.port),
                "-o", "BatchMode=yes", "-o", "KexAlgorithms=curve25519-sha256"]  # fmt: skip
        result = await env.gw.run(
            [*base, "-A", "alice+alice-box@127.0.0.1", "ssh-add -l; echo $SSH_AUTH_SOCK"],
            env=client_env,
        )
        without = await env.gw.run(
            [*base, "-a", "alice+alice-box@127.0.0.1", "ssh-add -l; echo rc=$?"], env=client_env
        )
    finally:
        agent.terminate()
        await agent.wait()
    assert result.returncode == 0, result.stderr.decode()
    out = result.stdout.decode()
    assert fingerprint in out, result.stderr.decode()
    assert "/run/stockade/s/" in out  # the socket mounted into this session's directory
    assert fingerprint not in without.stdout.decode()  # without -A no agent is reachable


PLANTED_GITCONFIG = """\
[credential]
\thelper = "!f() { /run/stockade/bin/git-credential-stockade \\"$@\\" > /tmp/stolen; }; f"
"""

PTRACE_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <sys/ptrace.h>
#include <sys/wait.h>
int main(int argc, char **argv) {
    int pid = atoi(argv[1]);
    if (ptrace(PTRACE_ATTACH, pid, 0, 0) != 0) { perror("attach"); return 1; }
    waitpid(pid, 0, 0);
    printf("attached %d\n", pid);
    ptrace(PTRACE_DETACH, pid, 0, 0);
    return 0;
}
"""


async def test_an_admin_in_someone_elses_workspace_brings_no_credentials(
    env: Env, tmp_path: Path
) -> None:
    """Regression (atk10): an admin entering alice's workspace runs as its uid, alice's. She can
    ptrace the admin's processes (shown with a real ``PTRACE_ATTACH``) and plant what they run
    (her ``~/.gitconfig`` adds a credential helper of hers to the admin's ``git``), so any
    credential socket or forwarded agent of the admin's session was hers to use: the
    proxy's process-tree check passes for the admin's own descendants. Such a session now gets
    neither (and no token), and is told about the agent."""
    alice = await env.user("alice", workspace="planted")
    ada = await env.user("ada", "admin")
    ada_password = env.secret("ada")
    gw = env.gw
    tracer = tmp_path / "tracer"
    source = tmp_path / "tracer.c"
    source.write_text(PTRACE_C)
    built = await gw.run(["gcc", "-static", "-O1", "-o", str(tracer), str(source)])
    assert built.returncode == 0, built.stderr.decode()
    planted = base64.b64encode(PLANTED_GITCONFIG.encode()).decode()
    blob = base64.b64encode(tracer.read_bytes()).decode()
    result = await gw.run(
        gw.ssh_cmd("alice+planted", f"echo {planted} | base64 -d > $HOME/.gitconfig;"
                   "base64 -d > $HOME/tracer; chmod 700 $HOME/tracer; rm -f /tmp/stolen",
                   key=alice),
        stdin=blob.encode(),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()

    agent_sock = tmp_path / "agent.sock"
    agent = await asyncio.create_subprocess_exec(
        "ssh-agent", "-D", "-a", str(agent_sock), env=CLEAN_ENV, stdout=subprocess.DEVNULL
    )
    try:
        await agent_listening(agent_sock)
        client_env = {**CLEAN_ENV, "SSH_AUTH_SOCK": str(agent_sock)}
        added = await gw.run(["ssh-add", "-q", str(ada)], env=client_env)
        assert added.returncode == 0, added.stderr
        base = ["ssh", *ssh_options(gw.tmp / "known_hosts"), "-p", str(gw.port),
                "-o", "BatchMode=yes", "-o", "KexAlgorithms=curve25519-sha256"]  # fmt: skip
        admin = await asyncio.create_subprocess_exec(
            *base, "-A", "ada+planted@127.0.0.1",
            f"{FILL}; echo sock=$STOCKADE_CREDENTIAL_SOCKET agent=$SSH_AUTH_SOCK;"
            "ls -A /run/stockade/s/*/; echo ready; sleep 60",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=client_env,
        )  # fmt: skip
        try:
            assert admin.stdout is not None
            seen = ""
            while "ready" not in seen:
                line = await asyncio.wait_for(admin.stdout.readline(), 30)
                assert line, "the admin's session ended early"
                seen += line.decode()
            # alice, while the admin's session runs: ptrace works on it (same uid), and she
            # looks for what her helper caught and for sockets she could reach through it
            steal = (
                "pid=$(ps -o pid,args | grep '[s]leep 60' | awk '{print $1}' | head -1);"
                "$HOME/tracer $pid 2>&1; cat /tmp/stolen 2>/dev/null; echo;"
                "find /run/stockade/s -type s 2>/dev/null | wc -l"
            )
            result = await gw.run(gw.ssh_cmd("alice+planted", steal, key=alice))
        finally:
            admin.kill()
            _, err = await admin.communicate()
    finally:
        agent.terminate()
        await agent.wait()
    out = result.stdout.decode()
    assert "attached" in out, out  # the owner can trace the admin's processes
    assert ada_password not in out
    assert ada_password not in seen
    assert out.split()[-1] == "0", out  # no socket of the admin's anywhere in the workspace
    assert "sock= agent=\n" in seen, seen
    assert "sock" not in seen.split("agent=")[1].split("ready")[0]  # an empty session dir
    assert b"agent forwarding withheld" in err, err


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _read_forward(port: int, within: float = 20.0) -> bytes:
    """What a connection to the local end of ``ssh -L`` receives, retried until the tunnel and
    the listener behind it are up (or ``within`` seconds pass)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        try:
            data = await asyncio.wait_for(reader.read(100), 5)
        except (TimeoutError, OSError):
            data = b""
        writer.close()
        if data:
            return data
        await asyncio.sleep(0.2)
    return b""


async def test_a_tunnelers_forward_reaches_a_listener_inside_the_container(env: Env) -> None:
    key = await env.user("tina", "tunneler", workspace="tina-box")
    host_secret = socket.create_server(("127.0.0.1", 0))  # a host service a forward must miss
    host_port = host_secret.getsockname()[1]
    host_secret.setblocking(False)
    local_in, local_host = free_port(), free_port()
    cmd = env.gw.ssh_cmd(
        "tina+tina-box", "echo inside-the-pod | nc -l -p 7070; sleep 30", key=key,
        options=["-L", f"{local_in}:127.0.0.1:7070", "-L", f"{local_host}:127.0.0.1:{host_port}",
                 "-o", "ExitOnForwardFailure=yes"],
    )  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE, env=CLEAN_ENV,
    )  # fmt: skip
    try:
        assert (await _read_forward(local_in)).strip() == b"inside-the-pod"
        assert await _read_forward(local_host, within=2.0) == b""
        with pytest.raises(BlockingIOError):  # the host listener never saw a connection
            host_secret.accept()
    finally:
        host_secret.close()
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
    # a forward alone (ssh -N, no shell) starts the workspace's Pod and enters it
    key_n = await env.user("nora", "tunneler", workspace="nora-box")
    assert "nora-box" not in env.runtime._pods
    local_n = free_port()
    lone = await asyncio.create_subprocess_exec(
        *env.gw.ssh_cmd("nora+nora-box", key=key_n, options=["-N", "-L", f"{local_n}:127.0.0.1:1"]),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL, env=CLEAN_ENV,
    )  # fmt: skip
    try:
        assert await _read_forward(local_n, within=3.0) == b""  # nothing listens on port 1
        assert env.runtime._pods["nora-box"].container_pid > 0
    finally:
        lone.kill()
        await lone.wait()
    # the gateway host's own addresses stay refused, whatever namespace a forward leaves from
    addresses = (await env.gw.run(["hostname", "-I"])).stdout.decode().split()
    for target in ("0.0.0.0", "169.254.1.1", *addresses[:2]):
        shown = f"[{target}]" if ":" in target else target
        refused = await env.gw.run(
            env.gw.ssh_cmd("tina+tina-box", key=key, options=["-v", "-W", f"{shown}:{env.gw.port}"])
        )
        assert refused.returncode != 0
        assert b"address of the gateway host" in refused.stderr, refused.stderr
    # a developer without the tunneler role gets no forward at all
    key = await env.user("dora", workspace="dora-box")
    denied = await env.gw.run(
        env.gw.ssh_cmd("dora+dora-box", key=key, options=["-W", "127.0.0.1:7070"])
    )  # fmt: skip
    assert denied.returncode != 0


THIEF = (
    "echo own=$STOCKADE_TOKEN;"
    "for f in /proc/[0-9]*/environ; do tr '\\0' '\\n' < $f 2>/dev/null; done"
    " | grep -E '^STOCKADE_(TOKEN|CREDENTIAL_SOCKET)=' | sort -u;"
    "ls /home /home/workspace 2>&1; find / -name '*-file' 2>/dev/null;"
    "ps -o user,args | grep -c '[h]older-marker'"
)


def _tokens(out: str) -> tuple[str, set[str]]:
    own = next(line.removeprefix("own=") for line in out.splitlines() if line.startswith("own="))
    seen = {
        line.removeprefix("STOCKADE_TOKEN=")
        for line in out.splitlines()
        if line.startswith("STOCKADE_TOKEN=")
    }
    return own, seen


async def test_acceptance_2_users_and_an_admin_cannot_see_each_others_secrets(env: Env) -> None:
    alice = await env.user("alice", workspace="shared")
    bob = await env.user("bob", workspace="bob-box")
    ada = await env.user("ada", "admin")
    ada_password = env.secret("ada")
    gw = env.gw

    async def start(user: str, key: Path, script: str) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            *gw.ssh_cmd(user, script, key=key), stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=CLEAN_ENV,
        )  # fmt: skip

    async def ready(proc: asyncio.subprocess.Process) -> str:
        assert proc.stdout is not None
        seen = ""
        while "ready" not in seen:
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            assert line, "the holder session ended early"
            seen += line.decode()
        return seen

    # the admin enters alice's workspace first (the Pod is created by the admin's login): their
    # token is kept out of the environment
    procs = [await start(
        "ada+shared", ada,
        f"echo admin-token=$STOCKADE_TOKEN; {FILL}; echo ready; sleep 60; echo admin-marker",
    )]  # fmt: skip
    try:
        admin_seen = await ready(procs[0])
        # alice's session holds her token in its environment and a file in her home
        holder = await start(
            "alice+shared", alice,
            "echo mine > $HOME/alice-file; echo token=$STOCKADE_TOKEN; echo ready;"
            "sleep 60; echo holder-marker",  # the marker: in the session shell's command line
        )  # fmt: skip
        procs.append(holder)
        alice_token = (await ready(holder)).split("token=")[1].split()[0]
        assert "admin-token=\n" in admin_seen
        # nor does their session get a credential socket: it runs as alice's uid (see
        # test_an_admin_in_someone_elses_workspace_brings_no_credentials)
        assert f"password={ada_password}" not in admin_seen

        # bob, in his own workspace, goes looking for alice's token and files
        result = await gw.run(gw.ssh_cmd("bob+bob-box", THIEF, key=bob))
        out = result.stdout.decode()
        own, seen = _tokens(out)
        assert own
        assert seen == {own}  # only his own session's token, anywhere
        assert alice_token not in out
        assert "alice-file" not in out
        assert out.split()[-1] == "0"  # alice's processes are not even visible

        # alice, in her workspace with the admin inside, steals what environs hold and tries
        # every credential socket she can find there
        steal = (
            THIEF + "; for s in $(for f in /proc/[0-9]*/environ; do tr '\\0' '\\n' < $f; done"
            " 2>/dev/null | grep ^STOCKADE_CREDENTIAL_SOCKET= | cut -d= -f2 | sort -u); do"
            f" STOCKADE_CREDENTIAL_SOCKET=$s STOCKADE_TOKEN= {FILL} 2>&1; done;"
            "ps -o args | grep -c '[a]dmin-marker'"
        )
        result = await gw.run(gw.ssh_cmd("alice+shared", steal, key=alice))
        out = result.stdout.decode()
        own, seen = _tokens(out)
        assert seen <= {own, alice_token}  # her own sessions' tokens only: never the admin's
        assert ada_password not in out
        assert int(out.split()[-1]) >= 1  # she does see the admin's process, not its secrets
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

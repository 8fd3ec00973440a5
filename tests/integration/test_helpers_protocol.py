"""Acceptance 1: both credential helpers (the static binary and the Python fallback) pass the same
protocol tests against a real broker over a per-session unix socket: git's get/store/erase (and a
real ``git credential fill``), docker-credential-helpers' get/list/store/erase/version, and
ExecCredential v1 and v1beta1. The static helper also runs in a bubblewrap sandbox holding only
itself, a static /bin/sh and the socket. Hostile clients: a token of another session, a peer of
another user, a socket whose session ended."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from broker.fixtures import env, openbao
from broker.harness import BrokerEnv, Result

from stockade.broker._sockets import SessionSocket
from stockade.core.events import SessionEnded, SessionKill
from stockade.helpers import HELPER_NAMES, static_helper

__all__ = ["env", "openbao"]

pytestmark = pytest.mark.timeout(120)

BIN = Path(sys.executable).parent
NOT_FOUND = "credentials not found in native keychain"


@dataclass
class Session:
    env: BrokerEnv
    user: str
    sid: str
    token: str
    socket: SessionSocket
    helpers: Path
    secret: str

    def environ(self, **extra: str) -> dict[str, str]:
        """A session's environment with only the socket: no token, no broker URL."""
        base = {
            "PATH": f"{self.helpers}:/usr/bin:/bin",
            "HOME": str(self.env.tmp / "home"),
            "LANG": "C.UTF-8",
            "STOCKADE_CREDENTIAL_SOCKET": str(self.socket.path),
        }
        base.update(extra)
        return base

    async def run(self, role: str, *args: str, stdin: bytes = b"", **extra: str) -> Result:
        return await self.env.run(
            [str(self.helpers / f"{role}-credential-stockade"), *args],
            env=self.environ(**extra),
            stdin=stdin,
        )


def _static_dir(tmp: Path) -> Path:
    binary = static_helper()
    assert binary is not None, "the static helper is not built: run make venv (make helpers)"
    folder = tmp / "static-bin"
    folder.mkdir()
    for name in HELPER_NAMES:
        (folder / name).symlink_to(binary)
    return folder


def _python_dir(tmp: Path) -> Path:
    folder = tmp / "python-bin"
    folder.mkdir()
    for name in HELPER_NAMES:
        (folder / name).symlink_to(BIN / name)
    return folder


IMPLEMENTATIONS: dict[str, Callable[[Path], Path]] = {"static": _static_dir, "python": _python_dir}


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
async def session(request: pytest.FixtureRequest, env: BrokerEnv) -> AsyncIterator[Session]:
    user = "dev" + secrets.token_hex(3)
    await env.add_user(user)
    assert env.bao is not None
    secret = "pw-" + secrets.token_urlsafe(12)
    env.bao.kv_put(
        f"stockade/{user}/git/git.example.com", {"username": "alice", "password": secret}
    )
    env.bao.kv_put(
        f"stockade/{user}/docker/registry.example.com:5000", {"username": "robot", "secret": secret}
    )
    env.bao.kv_put(f"stockade/{user}/docker/index.docker.io", {"username": "hub", "secret": "h"})
    env.bao.kv_put(f"stockade/{user}/kubernetes/prod", {"token": "kube-" + secret})
    sid, token = await env.session_token(user)
    (env.tmp / "home").mkdir(exist_ok=True)
    path = env.tmp / f"{sid}.sock"
    handle = await env.server.open_session_socket(sid, token, path, os.getuid())
    helpers = IMPLEMENTATIONS[request.param](env.tmp)
    try:
        yield Session(env, user, sid, token, handle, helpers, secret)
    finally:
        await handle.close()


# -- git ------------------------------------------------------------------------------------------


async def test_git_get(session: Session) -> None:
    got = await session.run("git", "get", stdin=b"protocol=https\nhost=git.example.com\n\n")
    assert got.returncode == 0, got.stderr
    assert got.stdout.decode().splitlines() == [
        "protocol=https",
        "host=git.example.com",
        "username=alice",
        f"password={session.secret}",
    ]
    assert got.stderr == b""


@pytest.mark.parametrize("action", ["store", "erase", "unknown-action"])
async def test_git_store_erase_and_unknown_are_silent_successes(
    session: Session, action: str
) -> None:
    stdin = f"protocol=https\nhost=git.example.com\nusername=a\npassword={session.secret}\n\n"
    got = await session.run("git", action, stdin=stdin.encode())
    assert (got.returncode, got.stdout, got.stderr) == (0, b"", b"")
    assert not list((session.env.tmp / "home").iterdir())  # nothing written


@pytest.mark.parametrize(
    "stdin",
    [b"protocol=https\nhost=nothing.example.com\n\n", b"protocol=ssh\nhost=git.example.com\n\n"],
)
async def test_git_miss_or_other_protocol_prints_nothing(session: Session, stdin: bytes) -> None:
    got = await session.run("git", "get", stdin=stdin)
    assert (got.returncode, got.stdout) == (0, b"")


async def test_git_url_attribute(session: Session) -> None:
    got = await session.run("git", "get", stdin=b"url=https://bob@git.example.com/r.git\n\n")
    assert got.returncode == 0, got.stderr
    assert f"password={session.secret}" in got.stdout.decode()


async def test_git_malformed_input_is_one_line_and_quit(session: Session) -> None:
    got = await session.run("git", "get", stdin=b"protocol https\n")
    assert got.returncode == 1
    assert got.stdout == b"quit=1\n"
    assert got.stderr.decode().startswith("git-credential-stockade: malformed credential line")
    assert got.stderr.count(b"\n") == 1


async def test_real_git_credential_fill(session: Session) -> None:
    helper = session.helpers / "git-credential-stockade"
    got = await session.env.run(
        ["git", "-c", f"credential.helper={helper}", "credential", "fill"],
        env={**session.environ(), "GIT_TERMINAL_PROMPT": "0", "GIT_CONFIG_NOSYSTEM": "1"},
        stdin=b"protocol=https\nhost=git.example.com\n\n",
    )
    assert got.returncode == 0, got.stderr
    assert f"password={session.secret}" in got.stdout.decode()
    assert "username=alice" in got.stdout.decode()


# -- docker ---------------------------------------------------------------------------------------


async def test_docker_get_list_version(session: Session) -> None:
    got = await session.run("docker", "get", stdin=b"registry.example.com:5000\n")
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout) == {
        "ServerURL": "registry.example.com:5000",
        "Username": "robot",
        "Secret": session.secret,
    }
    listed = await session.run("docker", "list")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == {
        "registry.example.com:5000": "robot",
        "https://index.docker.io/v1/": "hub",
    }
    version = await session.run("docker", "version")
    assert (version.returncode, version.stdout) == (0, b"docker-credential-stockade (Stockade)\n")


async def test_docker_not_found_is_the_standard_message(session: Session) -> None:
    got = await session.run("docker", "get", stdin=b"ghcr.io")
    assert (got.returncode, got.stdout.decode()) == (1, NOT_FOUND + "\n")


@pytest.mark.parametrize("action", ["store", "erase"])
async def test_docker_store_and_erase_are_refused(session: Session, action: str) -> None:
    payload = json.dumps({"ServerURL": "ghcr.io", "Username": "u", "Secret": "s"}).encode()
    got = await session.run("docker", action, stdin=payload)
    message = f"credentials are managed by Stockade; {action} is not supported"
    assert (got.returncode, got.stdout.decode()) == (1, message + "\n")
    assert got.stderr.decode() == f"docker-credential-stockade: {message}\n"


async def test_docker_usage_and_unknown_action(session: Session) -> None:
    usage = await session.run("docker")
    assert usage.returncode == 1
    assert usage.stdout.startswith(b"Usage: docker-credential-stockade")
    unknown = await session.run("docker", "frobnicate")
    assert (unknown.returncode, unknown.stdout) == (1, b"Unknown credential action `frobnicate`\n")
    empty = await session.run("docker", "get", stdin=b"  \n")
    assert (empty.returncode, empty.stdout) == (1, b"no credentials server URL\n")


# -- kubectl --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "api_version", ["client.authentication.k8s.io/v1", "client.authentication.k8s.io/v1beta1"]
)
async def test_exec_credential(session: Session, api_version: str) -> None:
    info = {
        "apiVersion": api_version,
        "kind": "ExecCredential",
        "spec": {"interactive": False, "cluster": {"server": "https://prod.example.com:6443"}},
    }
    got = await session.run("kubectl", "--cluster", "prod", KUBERNETES_EXEC_INFO=json.dumps(info))
    assert got.returncode == 0, got.stderr
    doc = json.loads(got.stdout)
    assert doc["apiVersion"] == api_version
    assert doc["kind"] == "ExecCredential"
    assert doc["status"]["token"] == "kube-" + session.secret
    assert doc["status"]["expirationTimestamp"].endswith("Z")


async def test_exec_credential_cluster_from_the_exec_info(session: Session) -> None:
    info = {
        "apiVersion": "client.authentication.k8s.io/v1",
        "spec": {"cluster": {"server": "https://x:6443", "config": {"cluster": "prod"}}},
    }
    got = await session.run("kubectl", KUBERNETES_EXEC_INFO=json.dumps(info))
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["status"]["token"] == "kube-" + session.secret


@pytest.mark.parametrize(
    ("info", "message"),
    [
        ('{"apiVersion": "client.authentication.k8s.io/v2"}', "unsupported ExecCredential"),
        ("{not json", "KUBERNETES_EXEC_INFO is not JSON"),
        ("[1]", "KUBERNETES_EXEC_INFO is not a JSON object"),
        ("{}", "no cluster named"),
    ],
)
async def test_exec_credential_refusals(session: Session, info: str, message: str) -> None:
    got = await session.run("kubectl", KUBERNETES_EXEC_INFO=info)
    assert got.returncode == 1
    assert got.stderr.decode().startswith(f"kubectl-credential-stockade: {message}")
    assert got.stdout == b""


async def test_exec_credential_missing_cluster(session: Session) -> None:
    got = await session.run("kubectl", "--cluster", "staging")
    assert got.returncode == 1
    assert "no Kubernetes credential for cluster 'staging'" in got.stderr.decode()


# -- hostile clients and session ends -------------------------------------------------------------


async def test_another_sessions_token_is_ignored_on_a_session_socket(session: Session) -> None:
    other = "ev" + secrets.token_hex(3)
    await session.env.add_user(other)
    assert session.env.bao is not None
    session.env.bao.kv_put(
        f"stockade/{other}/git/git.example.com", {"username": "eve", "password": "eves"}
    )
    _sid, other_token = await session.env.session_token(other)
    got = await session.run(
        "git", "get", stdin=b"protocol=https\nhost=git.example.com\n\n", STOCKADE_TOKEN=other_token
    )
    assert got.returncode == 0, got.stderr
    assert "username=alice" in got.stdout.decode()
    assert "eve" not in got.stdout.decode()


async def test_a_peer_of_another_user_is_dropped(session: Session) -> None:
    if os.geteuid() != 0:
        pytest.fail("needs root to run a helper as another user")
    # A socket in a directory anyone may enter, with mode 0666: only SO_PEERCRED stands
    # between the user nobody and the session's credentials.
    folder = Path(tempfile.mkdtemp(prefix="stockade-peer-", dir="/tmp"))
    os.chmod(folder, 0o755)  # noqa: S103 - the point of the test
    handle = await session.env.server.open_session_socket(
        session.sid, session.token, folder / "s.sock", os.getuid()
    )
    try:
        os.chmod(handle.path, 0o666)  # noqa: S103 - the point of the test
        helper = (session.helpers / "git-credential-stockade").resolve()  # outside the 0700 tmp
        role = ["git"] if helper.name == "stockade-credential-helper" else []
        got = await session.env.run(
            [
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                str(helper),
                *role,
                "get",
            ],
            env={**session.environ(), "STOCKADE_CREDENTIAL_SOCKET": str(handle.path)},
            stdin=b"protocol=https\nhost=git.example.com\n\n",
        )
    finally:
        await handle.close()
        shutil.rmtree(folder)
    assert got.returncode == 1, got.stderr
    assert session.secret.encode() not in got.stdout
    assert b"cannot reach the broker" in got.stderr
    assert b"ermission denied" not in got.stderr  # it connected, and the broker hung up


async def test_an_ended_session_is_refused_and_its_socket_closed(session: Session) -> None:
    await session.env.identity.end_session(session.sid, reason="test")
    await session.env.bus.publish(
        SessionEnded(session_id=session.sid, username=session.user, reason="test")
    )
    for _ in range(100):  # bounded: the event closes the socket
        if session.socket.closed:
            break
        await session.env.bus.flush()
    assert session.socket.closed
    assert not session.socket.path.exists()
    got = await session.run("git", "get", stdin=b"protocol=https\nhost=git.example.com\n\n")
    assert got.returncode == 1
    assert got.stdout == b"quit=1\n"
    assert b"cannot reach the broker" in got.stderr


async def test_a_killed_session_is_refused_on_the_next_request(session: Session) -> None:
    """The store still calls the session live; the kill on the bus is enough."""
    await session.env.bus.publish(SessionKill(session_id=session.sid, reason="test", by="admin"))
    for _ in range(100):
        if session.socket.closed:
            break
        await session.env.bus.flush()
    sessions = session.env.server.sessions
    assert sessions is not None
    assert sessions.is_dead(session.sid)
    got = await session.env.run(
        [str(session.helpers / "git-credential-stockade"), "get"],
        env={**session.environ(), "STOCKADE_CREDENTIAL_SOCKET": "", "STOCKADE_TOKEN": session.token,
             "STOCKADE_API": session.env.url, "STOCKADE_CA": str(session.env.ca)},
        stdin=b"protocol=https\nhost=git.example.com\n\n",
    )  # fmt: skip
    if session.helpers.name.startswith("static"):
        assert b"STOCKADE_CREDENTIAL_SOCKET is not set" in got.stderr  # no TLS in the binary
    else:
        assert b"session token rejected (session_ended)" in got.stderr
    assert got.returncode == 1


# -- the static helper in a sandbox with nothing else ---------------------------------------------


async def test_static_helper_in_an_empty_sandbox(env: BrokerEnv) -> None:
    binary = static_helper()
    assert binary is not None, "the static helper is not built: run make venv (make helpers)"
    bwrap, busybox = shutil.which("bwrap"), shutil.which("busybox")
    assert bwrap is not None, "needs bubblewrap"
    assert busybox is not None, "needs busybox-static"
    kind = (await env.run(["file", "-L", busybox], env={"PATH": "/usr/bin:/bin"})).stdout
    assert b"statically linked" in kind or b"static-pie" in kind, "busybox must be busybox-static"
    user = "sb" + secrets.token_hex(3)
    await env.add_user(user)
    assert env.bao is not None
    env.bao.kv_put(f"stockade/{user}/git/git.example.com", {"username": "u", "password": "sbpw"})
    sid, token = await env.session_token(user)
    handle = await env.server.open_session_socket(sid, token, env.tmp / "sb.sock", os.getuid())
    try:
        script = (
            "printf 'protocol=https\\nhost=git.example.com\\n\\n' | git-credential-stockade get; "
            "echo exit=$?"
        )
        got = await env.run(
            [bwrap, "--unshare-all", "--die-with-parent", "--clearenv",
             "--ro-bind", busybox, "/bin/sh",
             "--ro-bind", str(binary), "/bin/git-credential-stockade",
             "--bind", str(handle.path), "/run/stockade/credentials.sock",
             "--setenv", "PATH", "/bin",
             "--setenv", "STOCKADE_CREDENTIAL_SOCKET", "/run/stockade/credentials.sock",
             "/bin/sh", "-c", script],
            env={"PATH": "/usr/bin:/bin"},
        )  # fmt: skip
    finally:
        await handle.close()
    assert got.returncode == 0, got.stderr
    assert got.stdout.decode().splitlines() == [
        "protocol=https",
        "host=git.example.com",
        "username=u",
        "password=sbpw",
        "exit=0",
    ]


# -- attacks (atk18): hostile git input never yields another host's credential -------------------


@pytest.mark.parametrize(
    "stdin",
    [
        b"url=https://git.example.com@evil.example.com/r.git\n\n",  # userinfo, not the host
        b"url=https://evil.example.com/git.example.com\n\n",
        b"url=file:///etc/passwd\n\n",
        b"protocol=file\nhost=git.example.com\n\n",
        b"protocol=https\nhost=git.example.com\rpassword=x\n\n",
        b"protocol=https\nhost=git.example.com/../other\n\n",
        b"protocol=https\nhost=evil.example.com\nurl=https://git.example.com/\n\n",
        b"protocol=https\nhost=git.example.com\0\n\n",
        b"protocol=HTTPS\nhost=git.example.com:99999\n\n",
    ],
    ids=range(9),
)
async def test_hostile_git_input_gets_no_credential(session: Session, stdin: bytes) -> None:
    got = await session.run("git", "get", stdin=stdin)
    assert session.secret.encode() not in got.stdout
    assert got.stdout in (b"", b"quit=1\n"), got.stdout
    assert got.returncode in (0, 1)
    assert got.stderr.count(b"\n") <= 1  # one line, no traceback


# -- attacks (atk18): a hostile socket answering the helper --------------------------------------


_CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


def _whole(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def helpers_only(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    return IMPLEMENTATIONS[request.param](tmp_path)


@pytest.mark.parametrize(
    "answer",
    [
        # a chunk size that wraps an unchecked addition
        _CHUNKED + b"5\r\nhello\r\nfffffffffffffffd\r\nxx",
        _CHUNKED + b"ffffffffffffffffffff\r\nxx",
        b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\n\r\n" + b"[" * 100_000,
        _whole(b'{"username":"a","password":"b\\nc=d"}'),  # a newline git would read as a line
        b"SSH-2.0-OpenSSH\r\n\r\n",
    ],
    ids=range(7),
)
async def test_a_hostile_socket_gets_one_line_and_quit(
    helpers_only: Path, tmp_path: Path, answer: bytes
) -> None:
    """Whatever answers on the socket, git hears ``quit=1`` (no password prompt) and one line."""
    path = tmp_path / "evil.sock"

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(answer)
            await writer.drain()
        writer.close()

    server = await asyncio.start_unix_server(serve, path=str(path))
    try:
        proc = await asyncio.create_subprocess_exec(
            str(helpers_only / "git-credential-stockade"),
            "get",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={"PATH": "/usr/bin:/bin", "STOCKADE_CREDENTIAL_SOCKET": str(path)},
        )
        out, err = await asyncio.wait_for(
            proc.communicate(b"protocol=https\nhost=git.example.com\n\n"), 60
        )
    finally:
        server.close()
        await server.wait_closed()
    assert (proc.returncode, out) == (1, b"quit=1\n"), err
    assert err.startswith(b"git-credential-stockade: ")
    assert err.count(b"\n") == 1, err


async def test_deeply_nested_exec_info_is_one_line(session: Session) -> None:
    """KUBERNETES_EXEC_INFO comes from whatever kubeconfig kubectl read: nesting deeper than
    Python's stack is "not JSON", never a traceback."""
    got = await session.run("kubectl", KUBERNETES_EXEC_INFO="[" * 60_000)
    assert got.returncode == 1
    assert got.stderr.decode().startswith("kubectl-credential-stockade: KUBERNETES_EXEC_INFO is")
    assert got.stderr.count(b"\n") == 1, got.stderr
    assert got.stdout == b""

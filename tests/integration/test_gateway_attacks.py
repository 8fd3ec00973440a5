"""An independent attacker against the rebuilt access path (issue 9): asyncssh clients that
misbehave on purpose, races with revocations, limits, bytes no honest client sends.

Every test states the attack; a test that passes is an attack that failed (kept as a regression
test), one that fails is a defect (see the report of the attack session)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from gateway.harness import (
    GatewayEnv,
    agent_listening,
    ended_sessions,
    eventually,
    gateway_env,
    policy_bundle,
)

from stockade.core.errors import TokenRejected
from stockade.identity import totp_code

pytestmark = pytest.mark.timeout(180)

_KEX = ["curve25519-sha256"]


@pytest.fixture
async def env(tmp_path: Path, nats_url: str) -> AsyncIterator[GatewayEnv]:
    async with gateway_env(tmp_path, nats_url) as env:
        yield env


def _options(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "known_hosts": None,
        "agent_path": None,
        "password": None,
        "kbdint_auth": False,
        "kex_algs": _KEX,
    }
    base.update(kw)
    return base


async def _connect(env: GatewayEnv, user: str, **kw: Any) -> asyncssh.SSHClientConnection:
    return await asyncssh.connect("127.0.0.1", env.port, username=user, **_options(**kw))


def _key(path: Path | None) -> asyncssh.SSHKey:
    assert path is not None
    return asyncssh.read_private_key(str(path))


async def _echo_server(host: str = "127.0.0.1") -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read(100)
        writer.write(data)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, host, 0)
    return server, server.sockets[0].getsockname()[1]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -- authentication ------------------------------------------------------------------------


class _BadSigner:
    """A client key that presents the real public key but signs the wrong bytes: every signed
    request it makes fails verification (what a forger's client looks like)."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def sign(self, data: bytes) -> bytes:
        return bytes(self._real.sign(b"not-the-session" + data))


class _Forger(asyncssh.SSHClient):
    """Counts the signed publickey requests it sends, each with a bad signature."""

    def __init__(self) -> None:
        self.signed = 0

    def connection_made(self, conn: asyncssh.SSHClientConnection) -> None:
        send = conn.send_userauth_request

        async def send_bad(method: bytes, *args: bytes, key: Any = None, **kw: Any) -> None:
            if method == b"publickey" and key is not None:
                self.signed += 1
                key = _BadSigner(key)
            await send(method, *args, key=key, **kw)

        conn.send_userauth_request = send_bad  # type: ignore[method-assign]


async def test_bad_signatures_count_toward_max_auth_tries(env: GatewayEnv) -> None:
    """ATTACK: hold alice's *public* key, send signed requests with forged signatures again and
    again on one connection. The verdict of the first query is cached, so no request after the
    first costs an attempt: MaxAuthTries (max_auth_failures=6) must still bound them."""
    key = _key(await env.add_user("alice"))
    forger = _Forger()
    with pytest.raises((asyncssh.PermissionDenied, asyncssh.DisconnectError)):
        await asyncssh.connect(
            "127.0.0.1", env.port, username="alice", client_keys=[key] * 20,
            client_factory=lambda: forger, **_options(),
        )  # fmt: skip
    assert forger.signed <= env.gateway.settings.max_auth_failures, forger.signed
    assert env.gateway.live_sessions == []


class _Switch(asyncssh.SSHClient):
    """Changes the username right before a request of ``method`` goes out (RFC 4252 allows it)."""

    def __init__(self, method: bytes, to: str, *, signed_only: bool = False) -> None:
        self.method, self.to, self.signed_only = method, to, signed_only

    def connection_made(self, conn: asyncssh.SSHClientConnection) -> None:
        send = conn.send_userauth_request

        async def switched(method: bytes, *args: bytes, key: Any = None, **kw: Any) -> None:
            if method == self.method and (key is not None or not self.signed_only):
                conn._username = self.to
            await send(method, *args, key=key, **kw)

        conn.send_userauth_request = switched  # type: ignore[method-assign]


async def test_query_as_owner_then_sign_into_someone_elses_workspace(env: GatewayEnv) -> None:
    """ATTACK: query as ``mallory`` (PK_OK), sign as ``mallory+bobs-ws``: the new target must
    be decided again (workspace owned by bob: denied)."""
    key = _key(await env.add_user("mallory"))
    await env.add_user("bob")
    await env.identity.add_workspace("bobs-ws", owner="bob")
    with pytest.raises((asyncssh.PermissionDenied, asyncssh.DisconnectError)):
        await asyncssh.connect(
            "127.0.0.1", env.port, username="mallory", client_keys=[key],
            client_factory=lambda: _Switch(b"publickey", "mallory+bobs-ws", signed_only=True),
            **_options(),
        )  # fmt: skip
    assert env.gateway.live_sessions == []


async def test_workspace_of_someone_else_is_refused_and_answers_like_an_unknown_one(
    env: GatewayEnv,
) -> None:
    """ATTACK: ``alice+bobs-ws`` with alice's own key: policy denies (bob owns it), with the
    same Permission denied as ``alice+nosuch``."""
    key = _key(await env.add_user("alice"))
    await env.add_user("bob")
    await env.identity.add_workspace("bobs-ws", owner="bob")
    for target in ("alice+bobs-ws", "alice+nosuch"):
        with pytest.raises(asyncssh.PermissionDenied):
            await _connect(env, target, client_keys=[key])
    assert env.gateway.live_sessions == []


_MFA = {'"require_mfa": false,': '"require_mfa": "mfa" in input.context.user.roles,'}


def _secret(enrollment: Any) -> bytes:
    return base64.b32decode(enrollment.secret + "=" * (-len(enrollment.secret) % 8))


class _Totp(_Switch):
    def __init__(self, code: str, method: bytes, to: str) -> None:
        super().__init__(method, to)
        self.code = code

    def kbdint_auth_requested(self) -> str:
        return ""

    def kbdint_challenge_received(
        self, name: str, instructions: str, lang: str, prompts: Any
    ) -> list[str]:
        return [self.code for _ in prompts]


async def test_totp_passed_for_alice_does_not_satisfy_bobs_require_mfa(
    tmp_path: Path, nats_url: str
) -> None:
    """ATTACK: keyboard-interactive with alice's right TOTP code, then publickey as bob with
    bob's (stolen) key: bob's require_mfa must ask again."""
    bundle = policy_bundle(tmp_path / "policy", _MFA)
    (tmp_path / "gw").mkdir()
    async with gateway_env(tmp_path / "gw", nats_url, bundle_dir=bundle) as env:
        await env.add_user("alice", "mfa")
        bob_key = _key(await env.add_user("bob", "mfa"))
        secret = _secret(await env.identity.enable_totp("alice"))
        await env.identity.enable_totp("bob")
        code = totp_code(secret, int(time.time()) // 30)
        with pytest.raises((asyncssh.PermissionDenied, asyncssh.DisconnectError)):
            await asyncssh.connect(
                "127.0.0.1", env.port, username="alice", client_keys=[bob_key],
                client_factory=lambda: _Totp(code, b"publickey", "bob"),
                **_options(kbdint_auth=True, preferred_auth="keyboard-interactive,publickey"),
            )  # fmt: skip
        assert env.gateway.live_sessions == []
        await env.succeeded.settle()
        assert env.succeeded.matching(username="bob") == []


async def test_mfa_user_reaches_a_second_workspace(tmp_path: Path, nats_url: str) -> None:
    """An MFA user logging in as ``mona+lab`` (her own second workspace) with her right code
    and key gets in: the TOTP code is checked for the user, not for the whole target."""
    bundle = policy_bundle(tmp_path / "policy", _MFA)
    (tmp_path / "gw").mkdir()
    async with gateway_env(tmp_path / "gw", nats_url, bundle_dir=bundle) as env:
        key = _key(await env.add_user("mona", "mfa"))
        await env.identity.add_workspace("lab", owner="mona")
        secret = _secret(await env.identity.enable_totp("mona"))
        code = totp_code(secret, int(time.time()) // 30)
        async with await asyncssh.connect(
            "127.0.0.1", env.port, username="mona+lab", client_keys=[key],
            client_factory=lambda: _Totp(code, b"none", "mona+lab"),
            **_options(kbdint_auth=True, preferred_auth="keyboard-interactive,publickey"),
        ) as conn:  # fmt: skip
            result = await conn.run("echo $STOCKADE_WORKSPACE", check=False)
        assert result.stdout == "lab\n", result.stderr


async def test_token_is_dead_once_its_session_ended(env: GatewayEnv) -> None:
    """ATTACK: keep the session token and use it after logging out."""
    key = _key(await env.add_user("tom"))
    async with await _connect(env, "tom", client_keys=[key]) as conn:
        token = (await conn.run('printf %s "$STOCKADE_TOKEN"', check=True)).stdout
        assert isinstance(token, str)
        await env.identity.verify_token(token)
    await ended_sessions(env.identity, "tom")
    with pytest.raises(TokenRejected):
        await env.identity.verify_token(token)


# -- revocation races ----------------------------------------------------------------------


class _Stall(asyncssh.SSHClient):
    """Holds the signed publickey request until ``go`` is set (``queried`` says PK_OK came)."""

    def __init__(self) -> None:
        self.queried = asyncio.Event()
        self.go = asyncio.Event()

    def connection_made(self, conn: asyncssh.SSHClientConnection) -> None:
        send = conn.send_userauth_request

        async def stalled(method: bytes, *args: bytes, key: Any = None, **kw: Any) -> None:
            if method == b"publickey" and key is not None:
                self.queried.set()
                await self.go.wait()
            await send(method, *args, key=key, **kw)

        conn.send_userauth_request = stalled  # type: ignore[method-assign]


async def _stalled_login(
    env: GatewayEnv, user: str, key: asyncssh.SSHKey
) -> tuple[_Stall, asyncio.Task[asyncssh.SSHClientConnection]]:
    stall = _Stall()
    task = asyncio.ensure_future(
        asyncssh.connect(
            "127.0.0.1",
            env.port,
            username=user,
            client_keys=[key],
            client_factory=lambda: stall,
            **_options(),
        )
    )
    await asyncio.wait_for(stall.queried.wait(), 20)
    return stall, task


async def test_role_change_between_query_and_signature_is_not_lost(env: GatewayEnv) -> None:
    """ATTACK: get PK_OK, hold the signed request while an administrator makes the user a
    contractor, then sign. The login must not keep the roles of the query: the session is
    recorded (record_session for contractors)."""
    key = _key(await env.add_user("cleo"))
    stall, task = await _stalled_login(env, "cleo", key)
    await env.identity.set_roles("cleo", ["contractor"])
    await asyncio.sleep(0.3)  # the roles_changed event has come and gone
    stall.go.set()
    try:
        conn = await asyncio.wait_for(task, 20)
    except (asyncssh.PermissionDenied, asyncssh.DisconnectError):
        return  # refusing the stale login is a fine answer too
    async with conn:
        with contextlib.suppress(asyncssh.Error, OSError):
            await conn.run("echo hello", check=False)
    await eventually(lambda: env.gateway.live_sessions == [])
    rows = await env.identity.list_sessions(username="cleo")
    # either the stale login was refused (no session) or it runs as a contractor (recorded)
    assert all(row.recording is not None for row in rows), "a contractor's session ran unrecorded"


async def test_disable_between_query_and_signature_refuses_the_login(env: GatewayEnv) -> None:
    """ATTACK: as above, but the user is disabled while the signed request is held."""
    key = _key(await env.add_user("dora"))
    stall, task = await _stalled_login(env, "dora", key)
    await env.identity.set_disabled("dora", True)
    stall.go.set()
    try:
        conn = await asyncio.wait_for(task, 20)
    except (asyncssh.Error, OSError):
        conn = None
    if conn is not None:
        async with conn:
            with contextlib.suppress(asyncssh.Error, OSError):
                result = await conn.run("echo ran", check=False)
                assert result.stdout != "ran\n", "a disabled user's command ran"
    assert await eventually(lambda: env.gateway.live_sessions == [])
    assert not any(row.live for row in await env.identity.list_sessions(username="dora"))


async def test_multiplexed_channel_after_removal_is_refused(env: GatewayEnv) -> None:
    """ATTACK: ControlMaster-style: keep the connection, remove the user, open a new channel."""
    key = _key(await env.add_user("rita"))
    conn = await _connect(env, "rita", client_keys=[key])
    try:
        assert (await conn.run("true", check=False)).exit_status == 0
        await env.identity.remove_user("rita")
        ran = 0
        for _ in range(50):  # bounded: the connection must die within ~5 s
            try:
                result = await conn.run("echo ran", check=False)
            except (asyncssh.Error, OSError):
                break
            ran += result.stdout == "ran\n"
            await asyncio.sleep(0.1)
        assert ran <= 1, f"{ran} commands ran after the user was removed"
    finally:
        conn.close()


async def test_losing_the_tunneler_role_closes_open_forwards(env: GatewayEnv) -> None:
    """ATTACK: open ``-R`` while a tunneler; keep using it after the role is taken away. Policy
    now denies ssh.tcpip-forward, so the listener (or the connection) must go."""
    server, echo_port = await _echo_server()
    key = _key(await env.add_user("tina", "tunneler"))
    port = _free_port()
    async with server, await _connect(env, "tina", client_keys=[key]) as conn:
        listener = await conn.forward_remote_port("127.0.0.1", port, "127.0.0.1", echo_port)
        assert listener.get_port() == port
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.read(100), 10) == b"ping"
        writer.close()
        await env.identity.set_roles("tina", [])

        async def forward_gone() -> bool:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                return True
            writer.write(b"ping")
            try:
                data = await asyncio.wait_for(reader.read(100), 2)
            except (TimeoutError, OSError):
                data = b""
            writer.close()
            return data != b"ping"

        assert await eventually(forward_gone, within=5), "the -R forward outlived the role"


async def test_max_session_seconds_bounds_the_connection_not_each_channel(
    tmp_path: Path, nats_url: str
) -> None:
    """ATTACK: with ControlMaster, open a new channel every time the last one hits
    max_session_seconds: the session (the connection) must end at the limit."""
    bundle = policy_bundle(tmp_path / "policy", {'"max_session_seconds": 28800': (
        '"max_session_seconds": 2'
    )})  # fmt: skip
    (tmp_path / "gw").mkdir()
    async with gateway_env(tmp_path / "gw", nats_url, bundle_dir=bundle) as env:
        key = _key(await env.add_user("lena"))
        conn = await _connect(env, "lena", client_keys=[key])
        try:
            started = asyncio.get_running_loop().time()
            outlived = False
            for _ in range(6):  # 6 x ~1 s: well past the 2 s limit
                try:
                    await conn.run("sleep 1", check=True)
                except (asyncssh.Error, OSError):
                    break
                if asyncio.get_running_loop().time() - started > 3.5:
                    outlived = True
                    break
            assert not outlived, "a new channel ran after the session's max_session_seconds"
        finally:
            conn.close()


# -- limits --------------------------------------------------------------------------------


async def test_session_channels_per_connection_are_bounded(env: GatewayEnv) -> None:
    """ATTACK: open more session channels than max_channels_per_connection (16)."""
    key = _key(await env.add_user("paul"))
    async with await _connect(env, "paul", client_keys=[key]) as conn:
        opened, refused = [], 0
        for _ in range(20):
            try:
                opened.append(await conn.create_process("sleep 30"))
            except asyncssh.ChannelOpenError:
                refused += 1
        assert len(opened) == env.gateway.settings.max_channels_per_connection
        assert refused == 20 - len(opened)
        for process in opened:
            process.close()


async def test_forward_channels_per_connection_are_bounded(tmp_path: Path, nats_url: str) -> None:
    """ATTACK: ``-L`` channels count as channels too ("Open channels (sessions, forwards)"):
    open 40 direct-tcpip channels at once on one connection."""
    gate = asyncio.Event()

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await gate.wait()
        writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    target = server.sockets[0].getsockname()[1]
    (tmp_path / "gw").mkdir()
    async with server, gateway_env(tmp_path / "gw", nats_url, forward_to_loopback=True) as env:
        key = _key(await env.add_user("tara", "tunneler"))
        async with await _connect(env, "tara", client_keys=[key]) as conn:
            writers = []
            for _ in range(40):
                with contextlib.suppress(asyncssh.ChannelOpenError):
                    writers.append((await conn.open_connection("127.0.0.1", target))[1])
            opened = len(writers)
            gate.set()
            for writer in writers:
                writer.close()
            limit = env.gateway.settings.max_channels_per_connection
            assert opened <= limit, f"{opened} forward channels open on one connection"
            # closed forwards give their slots back: many short ones in a row all open
            await asyncio.sleep(0.5)
            for _ in range(2 * limit):
                reader, writer = await conn.open_connection("127.0.0.1", target)
                assert await asyncio.wait_for(reader.read(10), 10) == b""
                writer.close()
                await asyncio.sleep(0.05)


# -- forwards ------------------------------------------------------------------------------


def _own_addresses() -> list[str]:
    """Non-loopback addresses of this host's interfaces (the gateway host's own)."""
    found = []
    for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET):
        address = str(info[4][0])
        if not address.startswith("127."):
            found.append(address)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.254", 9))  # no packet is sent: picks the outgoing address
            found.append(probe.getsockname()[0])
        except OSError:
            pass
    return sorted({a for a in found if not a.startswith("127.")})


async def test_forward_to_the_gateway_hosts_own_address_is_refused(env: GatewayEnv) -> None:
    """ATTACK: ``-L`` to a service of the gateway host listening on all interfaces (as NATS or
    PostgreSQL may), through the host's own non-loopback address instead of 127.0.0.1."""
    addresses = _own_addresses()
    assert addresses, "this host has no non-loopback address to attack through"
    server, port = await _echo_server("0.0.0.0")
    key = _key(await env.add_user("tom", "tunneler"))
    async with server, await _connect(env, "tom", client_keys=[key]) as conn:
        for address in addresses:
            assert await _through(conn, address, port) == b"", (
                f"reached the gateway host's own service via {address}"
            )


async def _through(conn: asyncssh.SSHClientConnection, host: str, port: int) -> bytes:
    """What an echo service answers through a direct-tcpip channel (b"" when refused)."""
    try:
        reader, writer = await conn.open_connection(host, port)
    except asyncssh.ChannelOpenError:
        return b""
    writer.write(b"ping")
    try:
        return bytes(await asyncio.wait_for(reader.read(100), 5))
    finally:
        writer.close()


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "localhost", "127.1", "::1", "::ffff:127.0.0.1", "0.0.0.0", "169.254.169.254"],
)
async def test_forward_to_loopback_spellings_is_refused(env: GatewayEnv, host: str) -> None:
    """ATTACK: every spelling of loopback / unspecified / link-local (the metadata address)."""
    server, port = await _echo_server()
    key = _key(await env.add_user("tom", "tunneler"))
    async with server, await _connect(env, "tom", client_keys=[key]) as conn:
        with pytest.raises(asyncssh.ChannelOpenError):
            await conn.open_connection(host, port)


@pytest.mark.parametrize(
    ("host", "port"),
    [("", 0), ("0.0.0.0", 0), ("::", 0), ("192.0.2.2", 0), ("::1", 80), ("localhost", 22)],
)
async def test_remote_forward_off_loopback_or_privileged_is_refused(
    env: GatewayEnv, host: str, port: int
) -> None:
    """ATTACK: ``-R`` on every interface, a non-loopback address, or a privileged port."""
    key = _key(await env.add_user("tina", "tunneler"))
    async with await _connect(env, "tina", client_keys=[key]) as conn:
        with pytest.raises(asyncssh.ChannelListenError):
            await conn.forward_remote_port(host, port or _free_port(), "127.0.0.1", 9)


# -- bytes no honest client sends ----------------------------------------------------------


async def test_scp_stream_with_a_dotdot_name_is_cut_off(env: GatewayEnv) -> None:
    """ATTACK: a contractor's ``scp -t .`` whose C line names ``../escape``."""
    key = _key(await env.add_user("cora", "contractor"))
    async with await _connect(env, "cora", client_keys=[key]) as conn:
        proc = await conn.create_process("scp -t .", encoding=None)
        assert await asyncio.wait_for(proc.stdout.read(1), 20) == b"\0"
        proc.stdin.write(b"C0644 4 ../escape\n")
        rest = await asyncio.wait_for(proc.stdout.read(1000), 20)
        await asyncio.wait_for(proc.wait_closed(), 20)
        err = await proc.stderr.read()
    assert not (env.data_dir / "workspaces" / "escape").exists()
    assert b"\0" not in rest or b"refused" in err, (rest, err)


@pytest.mark.parametrize(
    "command",
    [
        "scp -t 'x';id",
        "scp -t $(id)",
        "scp -t `id`",
        "scp -f a|id",
        "scp -t x\nid",
        "scp -o x -t .",
    ],
)
async def test_scp_commands_with_shell_syntax_are_refused_for_contractors(
    env: GatewayEnv, command: str
) -> None:
    """ATTACK: an "scp" command that would run something else unrecorded."""
    key = _key(await env.add_user("cora", "contractor"))
    async with await _connect(env, "cora", client_keys=[key]) as conn:
        result = await conn.run(command, check=False)
    assert result.exit_status == 1
    assert "scp command refused" in str(result.stderr)


async def test_audited_scp_runs_the_system_scp_not_one_from_the_workspace(
    env: GatewayEnv,
) -> None:
    """ATTACK (record_session bypass): a contractor puts an executable called ``scp`` in
    ``~/.stockade/bin`` (first on the session's PATH), then runs ``scp -t .``: the audited
    transfer, which is not recorded, must not run it."""
    key = _key(await env.add_user("cora", "contractor"))
    async with await _connect(env, "cora", client_keys=[key]) as conn:
        made = await conn.run(
            "mkdir -p .stockade/bin && cat > .stockade/bin/scp && chmod 755 .stockade/bin/scp",
            input="#!/bin/sh\necho owned > pwned\nprintf '\\0'\n",
            check=False,
        )
        assert made.exit_status == 0, made.stderr
        proc = await conn.create_process("scp -t .", encoding=None)
        await asyncio.wait_for(proc.stdout.read(1), 20)
        proc.stdin.write_eof()
        await asyncio.wait_for(proc.wait_closed(), 20)
    home = env.data_dir / "workspaces" / "cora"
    assert not (home / "pwned").exists(), "an unrecorded program of the contractor's ran"


async def test_contractor_input_without_a_pty_is_recorded(env: GatewayEnv) -> None:
    """ATTACK (record_input bypass): ``ssh contractor@gw sh`` and type commands on stdin: no
    PTY, so the commands were never recorded, only their output."""
    key = _key(await env.add_user("ines", "contractor"))
    async with await _connect(env, "ines", client_keys=[key]) as conn:
        result = await conn.run("sh", input="echo typed-$((6*7)) >/dev/null\nexit\n", check=False)
    assert result.exit_status == 0, result.stderr
    (row,) = await ended_sessions(env.identity, "ines")
    assert row.recording is not None
    text = await asyncio.to_thread(Path(row.recording).read_text)
    assert "echo typed-$((6*7))" in text, "the contractor's typed commands are not in the cast"


async def test_stockade_env_overrides_are_dropped(env: GatewayEnv) -> None:
    """ATTACK: send ``STOCKADE_TOKEN``/``STOCKADE_API`` (and a huge LC_ value) as client
    environment variables to point the session at another broker."""
    key = _key(await env.add_user("eve"))
    async with await _connect(env, "eve", client_keys=[key]) as conn:
        result = await conn.run(
            'printf "%s|%s|%s" "$STOCKADE_API" "${#LC_HUGE}" "${STOCKADE_TOKEN%%.*}"',
            env={"STOCKADE_API": "https://evil", "LC_HUGE": "x" * 100_000,
                 "STOCKADE_TOKEN": "forged"},
            check=False,
        )  # fmt: skip
    api, huge, token = str(result.stdout).split("|")
    assert api != "https://evil"
    assert huge == "0"
    assert token != "forged"


async def test_agent_is_not_reachable_without_the_obligation(tmp_path: Path, nats_url: str) -> None:
    """ATTACK: ``ssh -A`` where policy says agent_forwarding false: no SSH_AUTH_SOCK, and no
    agent socket visible inside the session."""
    bundle = policy_bundle(tmp_path / "policy", {'"agent_forwarding": true': (
        '"agent_forwarding": false'
    )})  # fmt: skip
    (tmp_path / "gw").mkdir()
    async with gateway_env(tmp_path / "gw", nats_url, bundle_dir=bundle) as env:
        key = _key(await env.add_user("ada"))
        agent_key = asyncssh.generate_private_key("ssh-ed25519")
        agent_dir = tmp_path / "agent"
        agent_dir.mkdir()
        agent = await asyncio.create_subprocess_exec(
            "ssh-agent", "-D", "-a", str(agent_dir / "sock"),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        try:
            await agent_listening(agent_dir / "sock")
            async with asyncssh.connect_agent(str(agent_dir / "sock")) as client:
                await client.add_keys([agent_key])
            async with await _connect(
                env, "ada", client_keys=[key], agent_path=str(agent_dir / "sock"),
                agent_forwarding=True,
            ) as conn:  # fmt: skip
                result = await conn.run(
                    'echo "[$SSH_AUTH_SOCK]"; ls /tmp | grep -c asyncssh || true', check=False
                )
        finally:
            agent.kill()
            await agent.wait()
    lines = str(result.stdout).split()
    assert lines[0] == "[]", result.stdout
    assert "agent forwarding denied" in str(result.stderr)


async def test_stop_right_after_a_logout_records_the_end_and_keeps_the_books(
    env: GatewayEnv, capfd: pytest.CaptureFixture[str]
) -> None:
    """A connection that closed just before ``stop()`` (its end still being recorded) must be
    recorded as ended, and closed in the pre-auth books as authenticated (it was cancelled and
    counted as a crash of an unauthenticated connection, which raised)."""
    key = _key(await env.add_user("sam"))
    conn = await _connect(env, "sam", client_keys=[key])
    assert (await conn.run("true", check=False)).exit_status == 0
    conn.close()
    await conn.wait_closed()
    await env.gateway.stop(grace=0)
    err = capfd.readouterr().err
    assert "no unauthenticated connection" not in err, err[-2000:]
    rows = await env.identity.list_sessions(username="sam")
    assert rows
    assert not any(row.live for row in rows), "a session stayed live after the gateway stopped"


async def test_a_client_that_hangs_up_after_a_refusal_is_not_penalised(env: GatewayEnv) -> None:
    """A refused client closing its connection is no parser crash: the next login from the same
    address is served (a crash penalty here locked honest users out for 90 s)."""
    key = _key(await env.add_user("alice"))
    stranger = asyncssh.generate_private_key("ssh-ed25519")
    for _ in range(3):
        with pytest.raises(asyncssh.PermissionDenied):
            await _connect(env, "alice", client_keys=[stranger])
    conn = await _connect(env, "alice", client_keys=[key])
    async with conn:
        assert (await conn.run("true", check=False)).exit_status == 0

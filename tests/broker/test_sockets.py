"""The broker's unix sockets: the shared one (a token per request) and per-session ones opened
with claims; plain HTTP, real identity, NATS and OpenBao."""

from __future__ import annotations

import asyncio
import os
import secrets
import stat
from pathlib import Path

import httpx
import pytest

from broker.harness import BrokerEnv, OpenBao, broker_env
from stockade.broker import _sockets
from stockade.core.errors import InvalidInput
from stockade.core.events import SessionKill
from stockade.core.settings import BrokerSocketSettings

GIT = {"protocol": "https", "host": "git.example.com"}


async def _user(env: BrokerEnv) -> tuple[str, str, str]:
    user = "u" + secrets.token_hex(4)
    await env.add_user(user)
    assert env.bao is not None
    env.bao.kv_put(f"stockade/{user}/git/git.example.com", {"username": "u", "password": "pw"})
    sid, token = await env.session_token(user)
    return user, sid, token


def _client(path: Path) -> httpx.AsyncClient:
    transport = httpx.AsyncHTTPTransport(uds=str(path))
    return httpx.AsyncClient(transport=transport, base_url="http://stockade", timeout=30)


async def test_the_shared_socket_needs_a_token(
    tmp_path: Path, nats_url: str, openbao: OpenBao
) -> None:
    path = tmp_path / "broker.sock"
    async with broker_env(
        tmp_path, nats_url, openbao, sockets=BrokerSocketSettings(path=path, mode=0o660)
    ) as env:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
        _user_name, _sid, token = await _user(env)
        async with _client(path) as client:
            ok = await client.post(
                "/v1/credentials/git", json=GIT, headers={"Authorization": f"Bearer {token}"}
            )
            assert ok.status_code == 200
            assert ok.json()["password"] == "pw"
            anonymous = await client.post("/v1/credentials/git", json=GIT)
            assert (anonymous.status_code, anonymous.json()["reason"]) == (401, "missing")
    assert not path.exists()


async def test_a_session_socket_opened_with_claims(env: BrokerEnv) -> None:
    user, sid, token = await _user(env)
    claims = await env.identity.verify_token(token)
    handle = await env.server.open_session_socket(sid, claims, env.tmp / "c.sock", os.getuid())
    assert stat.S_IMODE(os.stat(handle.path).st_mode) == 0o600
    async with _client(handle.path) as client:
        assert (await client.post("/v1/credentials/git", json=GIT)).status_code == 200
        await env.bus.publish(SessionKill(session_id=sid, username=user, reason="test"))
        for _ in range(400):  # bounded: the event arrives, open connections get a grace
            if handle.closed and not handle.path.exists():
                break
            await env.bus.flush()
            await asyncio.sleep(0.01)
        assert handle.closed
        assert not handle.path.exists()
        with pytest.raises(httpx.TransportError):
            await client.post("/v1/credentials/git", json=GIT)


async def test_a_session_ended_in_the_store_is_refused_on_a_claims_socket(
    env: BrokerEnv,
) -> None:
    _user_name, sid, token = await _user(env)
    claims = await env.identity.verify_token(token)
    handle = await env.server.open_session_socket(sid, claims, env.tmp / "d.sock", os.getuid())
    try:
        await env.identity.end_session(sid)  # no event: the first check asks the store
        async with _client(handle.path) as client:
            refused = await client.post("/v1/credentials/git", json=GIT)
        assert (refused.status_code, refused.json()["reason"]) == (401, "session_ended")
    finally:
        await handle.close()


async def test_a_token_of_another_session_is_refused(env: BrokerEnv) -> None:
    _user_name, sid, _token = await _user(env)
    _other, _sid2, other_token = await _user(env)
    handle = await env.server.open_session_socket(sid, other_token, env.tmp / "e.sock", os.getuid())
    try:
        async with _client(handle.path) as client:
            refused = await client.post("/v1/credentials/git", json=GIT)
        assert (refused.status_code, refused.json()["reason"]) == (401, "session_ended")
    finally:
        await handle.close()


async def test_a_path_that_is_not_a_socket_is_left_alone(env: BrokerEnv) -> None:
    _user_name, sid, token = await _user(env)
    target = env.tmp / "precious"
    target.write_text("keep me")
    with pytest.raises(InvalidInput, match="not a socket"):
        await env.server.open_session_socket(sid, token, target, os.getuid())
    assert target.read_text() == "keep me"
    with pytest.raises(InvalidInput, match="absolute"):
        await env.server.open_session_socket(sid, token, Path("relative.sock"), os.getuid())


# -- attacks (atk18): one session must not hold the broker ---------------------------------------

_HEAD = b"POST /v1/credentials/git HTTP/1.1\r\nHost: stockade\r\n"


async def _refused(path: Path, data: bytes) -> bytes:
    """What the broker sends before closing a connection that sent only ``data``."""
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        writer.write(data)
        await writer.drain()
        try:
            return await asyncio.wait_for(reader.read(), 30)  # a bound, not a timing assertion
        except ConnectionResetError:  # aborted: closed as well
            return b""
    finally:
        writer.close()


async def test_a_session_socket_holds_a_bounded_number_of_connections(env: BrokerEnv) -> None:
    """Idle connections of one session (each a file descriptor of the gateway's process) are
    capped: the one over the cap is closed at once, other sessions are served."""
    _user_name, sid, token = await _user(env)
    handle = await env.server.open_session_socket(sid, token, env.tmp / "f.sock", os.getuid())
    _other, sid2, token2 = await _user(env)
    other = await env.server.open_session_socket(sid2, token2, env.tmp / "g.sock", os.getuid())
    cap = getattr(_sockets, "_MAX_SESSION_CONNECTIONS", 32)
    held: list[asyncio.StreamWriter] = []
    try:
        for _ in range(cap):
            _reader, writer = await asyncio.open_unix_connection(str(handle.path))
            writer.write(_HEAD)
            held.append(writer)
        for _ in range(500):  # bounded: until the broker has accepted all of them
            if len(handle._protocols) >= cap:
                break
            await asyncio.sleep(0.01)
        assert len(handle._protocols) == cap
        assert await _refused(handle.path, _HEAD) == b""
        async with _client(other.path) as client:
            assert (await client.post("/v1/credentials/git", json=GIT)).status_code == 200
    finally:
        for writer in held:
            writer.close()
        await handle.close()
        await other.close()


@pytest.mark.parametrize(
    "sent",
    [b"", _HEAD, _HEAD + b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{}"],
    ids=["nothing", "half_a_head", "half_a_body"],
)
async def test_a_slow_request_is_cut_off(
    env: BrokerEnv, monkeypatch: pytest.MonkeyPatch, sent: bytes
) -> None:
    """Slowloris: a connection that does not deliver a whole request in time is closed."""
    monkeypatch.setattr(_sockets, "_REQUEST_TIMEOUT", 0.2, raising=False)
    _user_name, sid, token = await _user(env)
    handle = await env.server.open_session_socket(sid, token, env.tmp / "h.sock", os.getuid())
    try:
        assert await _refused(handle.path, sent) == b""
        async with _client(handle.path) as client:  # a whole request is still served
            assert (await client.post("/v1/credentials/git", json=GIT)).status_code == 200
    finally:
        await handle.close()


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o757])
async def test_a_socket_in_a_directory_others_may_write_is_refused(
    env: BrokerEnv, mode: int
) -> None:
    """Binding, chmod and chown go by name: in a directory another user may write (no sticky
    bit), that user can swap the fresh socket's name for a symlink between the calls and have
    the broker chmod/chown any file. Refused before anything is created there."""
    _user_name, sid, token = await _user(env)
    shared = env.tmp / "shared"
    shared.mkdir()
    shared.chmod(mode)
    with pytest.raises(InvalidInput, match="writable by"):
        await env.server.open_session_socket(sid, token, shared / "s.sock", os.getuid())
    assert list(shared.iterdir()) == []
    nested = shared / "inner"  # a safe directory inside an unsafe one is no safer
    nested.mkdir(mode=0o700)
    with pytest.raises(InvalidInput, match="writable by"):
        await env.server.open_session_socket(sid, token, nested / "s.sock", os.getuid())


async def test_a_sticky_world_writable_directory_is_accepted(env: BrokerEnv) -> None:
    """/tmp-like (sticky): others cannot rename or remove the broker's entries."""
    _user_name, sid, token = await _user(env)
    sticky = env.tmp / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    handle = await env.server.open_session_socket(sid, token, sticky / "s.sock", os.getuid())
    try:
        async with _client(handle.path) as client:
            assert (await client.post("/v1/credentials/git", json=GIT)).status_code == 200
    finally:
        await handle.close()


async def test_pipelined_requests_are_all_answered_under_the_request_deadline(
    env: BrokerEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The deadline covers receiving a request, never the broker's own work on it: two
    requests sent at once on one connection both get their answer."""
    monkeypatch.setattr(_sockets, "_REQUEST_TIMEOUT", 0.2, raising=False)
    _user_name, sid, token = await _user(env)
    handle = await env.server.open_session_socket(sid, token, env.tmp / "p.sock", os.getuid())
    body = b'{"protocol": "https", "host": "git.example.com"}'
    one = _HEAD + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
        len(body),
        body,
    )
    try:
        reader, writer = await asyncio.open_unix_connection(str(handle.path))
        writer.write(one + one)
        await writer.drain()
        answers = b""
        for _ in range(100):  # bounded: until both answers are in (or the broker hangs up)
            chunk = await asyncio.wait_for(reader.read(65536), 30)
            answers += chunk
            if not chunk or answers.count(b"HTTP/1.1 200 OK") == 2:
                break
        writer.close()
        assert answers.count(b"HTTP/1.1 200 OK") == 2, answers
        assert answers.count(b'"password":"pw"') == 2
    finally:
        await handle.close()

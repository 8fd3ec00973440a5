"""Acceptance 3: liveness is held in memory, yet an ended session or a disabled user is refused
on the next request: through the bus (session ended / kill events) and, without a bus, through
the store on every request. Real identity (SQLite), real NATS, the broker over HTTPS."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import ssl
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from broker.harness import BrokerEnv, OpenBao, broker_env, broker_settings
from stockade.authz import Authorizer
from stockade.broker import BrokerServer
from stockade.broker._liveness import LiveSessions
from stockade.broker._types import ClaimsLike, TokenVerifier
from stockade.bus import Bus, EmbeddedNats
from stockade.core.errors import TokenRejected
from stockade.core.events import Event, IdentityChanged, SessionEnded, SessionKill
from stockade.core.settings import AuthzSettings
from stockade.tls import DevCA

GIT = {"protocol": "https", "host": "git.example.com"}


@pytest.fixture
async def client(env: BrokerEnv) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=env.url, verify=env.tls(), timeout=30) as client:
        yield client


async def _user(env: BrokerEnv) -> tuple[str, str, str]:
    user = "u" + secrets.token_hex(4)
    await env.add_user(user)
    assert env.bao is not None
    env.bao.kv_put(f"stockade/{user}/git/git.example.com", {"username": "u", "password": "pw"})
    sid, token = await env.session_token(user)
    return user, sid, token


async def _get(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.post(
        "/v1/credentials/git", json=GIT, headers={"Authorization": f"Bearer {token}"}
    )


async def _until(condition: object, bus: Bus) -> None:
    for _ in range(200):  # bounded: the event travels through the server
        if callable(condition) and condition():
            return
        await bus.flush()
        await asyncio.sleep(0.005)
    raise AssertionError("the bus event did not arrive")


async def test_repeated_requests_are_answered_from_memory(
    env: BrokerEnv, client: httpx.AsyncClient
) -> None:
    sessions = env.server.sessions
    assert sessions is not None
    _user_name, _sid, token = await _user(env)
    assert (await _get(client, token)).status_code == 200
    hits = sessions.hits
    for _ in range(5):
        assert (await _get(client, token)).status_code == 200
    assert sessions.hits == hits + 5


async def test_session_ended_on_the_bus_is_refused_next(
    env: BrokerEnv, client: httpx.AsyncClient
) -> None:
    sessions = env.server.sessions
    assert sessions is not None
    user, sid, token = await _user(env)
    assert (await _get(client, token)).status_code == 200
    await env.identity.end_session(sid, reason="logout")
    await env.bus.publish(SessionEnded(session_id=sid, username=user, reason="logout"))
    await _until(lambda: sessions.is_dead(sid), env.bus)
    response = await _get(client, token)
    assert response.status_code == 401
    assert response.json()["reason"] == "session_ended"


async def test_kill_of_a_disabled_user_is_refused_next(
    env: BrokerEnv, client: httpx.AsyncClient
) -> None:
    sessions = env.server.sessions
    assert sessions is not None
    user, sid, token = await _user(env)
    assert (await _get(client, token)).status_code == 200
    await env.identity.set_disabled(user, True)
    await env.bus.publish(SessionKill(session_id="*", username=user, reason="user_disabled"))
    await _until(lambda: sessions.is_dead(sid), env.bus)
    response = await _get(client, token)
    assert response.status_code == 401
    assert response.json()["reason"] in {"session_ended", "user_disabled"}


async def test_a_kill_wins_over_a_store_that_still_says_live(
    env: BrokerEnv, client: httpx.AsyncClient
) -> None:
    sessions = env.server.sessions
    assert sessions is not None
    _user_name, sid, token = await _user(env)
    await env.bus.publish(SessionKill(session_id=sid, reason="kill", by="admin"))
    await _until(lambda: sessions.is_dead(sid), env.bus)
    assert (await env.identity.get_session(sid)).ended_at is None
    response = await _get(client, token)
    assert (response.status_code, response.json()["reason"]) == (401, "session_ended")


async def test_malformed_session_events_change_nothing(
    env: BrokerEnv, client: httpx.AsyncClient
) -> None:
    _user_name, _sid, token = await _user(env)
    assert (await _get(client, token)).status_code == 200
    await env.bus.publish_bytes("stockade.session.kill", b'{"session_id": 5}')
    await env.bus.publish_bytes("stockade.session.ended", b"\xff" * 100)
    await env.bus.flush()
    assert (await _get(client, token)).status_code == 200


class _PublishOnly:
    """A real publisher that is not a Bus: the broker then has no session events to follow."""

    def __init__(self, bus: Bus) -> None:
        self._bus = bus

    async def publish(self, event: Event) -> int:
        return await self._bus.publish(event)


async def test_without_the_bus_every_request_asks_the_store(
    tmp_path: Path, nats_url: str, openbao: OpenBao
) -> None:
    async with broker_env(tmp_path, nats_url, openbao) as env:
        # The same identity, store and bus, and a second broker that has no session events.
        server = BrokerServer.from_settings(
            broker_settings(openbao),
            identity=env.identity,
            authz=Authorizer(settings=AuthzSettings(decision_log=False)),
            publisher=_PublishOnly(env.bus),
            ca=DevCA(tmp_path / "ca2"),
        )
        await server.start()
        try:
            assert server.sessions is not None
            tls = ssl.create_default_context(cafile=str(server.ca_path))
            async with httpx.AsyncClient(base_url=server.url, verify=tls, timeout=30) as client:
                _name, sid, token = await _user(env)
                assert (await _get(client, token)).status_code == 200
                assert (await _get(client, token)).status_code == 200
                assert server.sessions.hits == 0
                await env.identity.end_session(sid)  # no event anywhere
                response = await _get(client, token)
                assert (response.status_code, response.json()["reason"]) == (401, "session_ended")
                other, _sid2, token2 = await _user(env)
                assert (await _get(client, token2)).status_code == 200
                await env.identity.set_disabled(other, True)
                response = await _get(client, token2)
                assert (response.status_code, response.json()["reason"]) == (401, "user_disabled")
        finally:
            await server.stop()


async def test_a_lost_event_costs_at_most_max_age(env: BrokerEnv) -> None:
    now = [0.0]
    sessions = LiveSessions(env.identity, max_age=30.0, clock=lambda: now[0])
    await sessions.attach(env.bus)
    try:
        _user_name, sid, token = await _user(env)
        await sessions.verify_token(token)
        await env.identity.end_session(sid)  # the event is lost: never published
        await sessions.verify_token(token)  # still from memory
        assert sessions.hits == 1
        now[0] = 30.0
        with pytest.raises(TokenRejected) as caught:
            await sessions.verify_token(token)
        assert caught.value.reason == "session_ended"
    finally:
        await sessions.detach()


async def test_forged_and_other_audience_tokens_never_hit_memory(env: BrokerEnv) -> None:
    sessions = LiveSessions(env.identity, max_age=30.0)
    await sessions.attach(env.bus)
    try:
        _user_name, _sid, token = await _user(env)
        await sessions.verify_token(token)
        forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
        with pytest.raises(TokenRejected):
            await sessions.verify_token(forged)
        with pytest.raises(TokenRejected):
            await sessions.verify_token(token, audience="someone-else")
    finally:
        await sessions.detach()


# -- attacks (atk18): what the memory must forget beyond session ends and kills ----------------


async def _eventually_rejected(sessions: LiveSessions, token: str, bus: Bus) -> TokenRejected:
    for _ in range(200):  # bounded: the event travels through the server
        try:
            await sessions.verify_token(token)
        except TokenRejected as exc:
            return exc
        await bus.flush()
        await asyncio.sleep(0.005)
    raise AssertionError("the token was still answered from memory")


async def test_a_role_taken_away_counts_on_the_next_request(env: BrokerEnv) -> None:
    """identity promises "a role taken away counts at once, however long the token lives"; the
    memory must follow ``identity.changed`` (roles_changed), not serve the old roles."""
    sessions = LiveSessions(env.identity, max_age=30.0)
    await sessions.attach(env.bus)
    try:
        user, _sid, token = await _user(env)
        await env.identity.set_roles(user, ["auditor"])
        assert (await sessions.verify_token(token)).roles == ("auditor",)
        assert (await sessions.verify_token(token)).roles == ("auditor",)  # from memory
        await env.identity.set_roles(user, [])
        await env.bus.publish(IdentityChanged(username=user, change="roles_changed", roles=[]))
        for _ in range(200):
            if (await sessions.verify_token(token)).roles == ():
                break
            await env.bus.flush()
            await asyncio.sleep(0.005)
        else:
            raise AssertionError("the removed role was still answered from memory")
    finally:
        await sessions.detach()


async def test_disabling_a_user_refuses_their_sessionless_token_next(env: BrokerEnv) -> None:
    """A token without a session (``issue_token`` with no sid) has no session kill to drop it:
    the ``user_disabled`` change must."""
    sessions = LiveSessions(env.identity, max_age=30.0)
    await sessions.attach(env.bus)
    try:
        user, _sid, _token = await _user(env)
        token = await env.identity.issue_token(user, ttl=300)
        await sessions.verify_token(token)
        await sessions.verify_token(token)
        assert sessions.hits == 1
        await env.identity.set_disabled(user, True)
        await env.bus.publish(IdentityChanged(username=user, change="user_disabled", roles=[]))
        caught = await _eventually_rejected(sessions, token, env.bus)
        assert caught.reason == "user_disabled"
    finally:
        await sessions.detach()


class _SlowStore:
    """The real identity, whose answer is held until ``release`` (a slow store round trip)."""

    def __init__(self, identity: TokenVerifier) -> None:
        self._identity = identity
        self.arrived = asyncio.Event()
        self.release = asyncio.Event()

    async def verify_token(self, token: str, *, audience: str | None = None) -> ClaimsLike:
        claims = await self._identity.verify_token(token, audience=audience)
        self.arrived.set()
        await self.release.wait()
        return claims


async def test_an_answer_overtaken_by_a_kill_of_its_user_is_not_remembered(
    env: BrokerEnv,
) -> None:
    """The store said live, then (while that answer travelled) the user's sessions were killed
    and ended: the in-flight answer must not be held in memory for the next requests."""
    slow = _SlowStore(env.identity)
    sessions = LiveSessions(slow, max_age=30.0)
    await sessions.attach(env.bus)
    try:
        user, sid, token = await _user(env)
        inflight = asyncio.ensure_future(sessions.verify_token(token))
        await asyncio.wait_for(slow.arrived.wait(), 10)
        await env.bus.publish(SessionKill(session_id="*", username=user, reason="killed"))
        await env.identity.end_session(sid, reason="killed")
        for _ in range(20):  # let the kill arrive while the answer is held
            await env.bus.flush()
            await asyncio.sleep(0.005)
        slow.release.set()
        with contextlib.suppress(TokenRejected):
            await asyncio.wait_for(inflight, 10)
        with pytest.raises(TokenRejected) as caught:
            await sessions.verify_token(token)
        assert caught.value.reason == "session_ended"
    finally:
        slow.release.set()
        await sessions.detach()


class _GatedAuthz:
    """The real authorizer, whose verdict is held until ``release`` (a slow policy call)."""

    def __init__(self) -> None:
        self._authz = Authorizer(settings=AuthzSettings(decision_log=False))
        self.arrived = asyncio.Event()
        self.release = asyncio.Event()

    async def decide(self, input_doc: Mapping[str, Any]) -> Any:
        decision = self._authz.decide(input_doc)
        self.arrived.set()
        await self.release.wait()
        return decision


async def test_a_kill_during_an_inflight_request_withholds_the_secret(
    tmp_path: Path, nats_url: str, openbao: OpenBao
) -> None:
    """The token was valid when the request arrived; the kill came while authz (or the secrets
    backend, or the audit) was being waited for: the secret must not leave after the kill."""
    async with broker_env(tmp_path, nats_url, openbao) as env:
        gated = _GatedAuthz()
        server = BrokerServer.from_settings(
            broker_settings(openbao),
            identity=env.identity,
            authz=gated,
            publisher=env.bus,
            ca=DevCA(tmp_path / "ca2"),
        )
        await server.start()
        try:
            sessions = server.sessions
            assert sessions is not None
            tls = ssl.create_default_context(cafile=str(server.ca_path))
            async with httpx.AsyncClient(base_url=server.url, verify=tls, timeout=30) as client:
                user, sid, token = await _user(env)
                inflight = asyncio.ensure_future(_get(client, token))
                await asyncio.wait_for(gated.arrived.wait(), 10)
                await env.bus.publish(SessionKill(session_id=sid, username=user, reason="kill"))
                await _until(lambda: sessions.is_dead(sid), env.bus)
                gated.release.set()
                response = await asyncio.wait_for(inflight, 30)
                assert "pw" not in response.text
                assert (response.status_code, response.json()["reason"]) == (401, "session_ended")
        finally:
            gated.release.set()
            await server.stop()


async def test_a_lost_bus_sends_every_request_to_the_store(env: BrokerEnv) -> None:
    """Session events missed while the bus is down must not be covered by memory: once the
    connection drops, the memory is not trusted (fail closed to the store)."""
    server = EmbeddedNats(env.tmp / "own-nats", connect_timeout=10.0)
    url = await server.start()
    bus = await Bus.connect(url, name="liveness-lost")
    sessions = LiveSessions(env.identity, max_age=30.0)
    try:
        await sessions.attach(bus)
        _user_name, sid, token = await _user(env)
        await sessions.verify_token(token)
        await sessions.verify_token(token)
        assert sessions.hits == 1
        await server.stop()
        for _ in range(500):  # bounded: until the client sees the connection gone
            if bus.epoch == -1:
                break
            await asyncio.sleep(0.01)
        assert bus.epoch == -1
        await env.identity.end_session(sid)  # its event would be lost: the bus is down
        with pytest.raises(TokenRejected) as caught:
            await sessions.verify_token(token)
        assert caught.value.reason == "session_ended"
    finally:
        await sessions.detach()
        await bus.close(drain_timeout=1)
        await server.stop()

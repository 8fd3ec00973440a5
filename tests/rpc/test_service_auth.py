"""Projected service tokens on real gRPC: the interceptor over mTLS, the rotating token file, audit.

An :class:`RpcServer` with :class:`ServiceAuthInterceptor` serves on loopback; callers present
tokens minted by a loopback issuer (``tls.jwks``) through :func:`service_token_credentials`, which
reads the token file on every call. Each hostile case is its own test and checks the status
code and the reason the caller is told.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tls.jwks import Issuer, serve_issuer

from stockade.authz import Authorizer, Context, Resource, Subject, build_input
from stockade.core.events import Event, ServiceCallRejected
from stockade.core.settings import AuthzSettings, IdentitySettings
from stockade.identity import IdentityService, KeyRing
from stockade.rpc import (
    AuthzClient,
    RpcServer,
    ServiceAuthInterceptor,
    admin_channel,
    mtls_channel,
)
from stockade.rpc._gen import authz_pb2, authz_pb2_grpc, identity_pb2, identity_pb2_grpc
from stockade.store import Store
from stockade.tls import (
    CertificateFiles,
    DevCA,
    MethodAllowList,
    ProjectedToken,
    ServiceTokenVerifier,
)

DECIDE = "/stockade.authz.v1.Authz/Decide"
DECIDE_STREAM = "/stockade.authz.v1.Authz/DecideStream"
GET_JWKS = "/stockade.identity.v1.Identity/GetJwks"


@dataclass
class Events:
    seen: list[Event] = field(default_factory=list)

    async def publish(self, event: Event) -> None:
        self.seen.append(event)


@dataclass
class Env:
    server: RpcServer
    issuer: Issuer
    tls: CertificateFiles
    token_file: Path
    events: Events
    admin: Path

    def channel(self, token: str | None, *, tls: CertificateFiles | None = None) -> aio.Channel:
        """A channel with ``token``, as the gateway (its certificate: authz and identity check
        the certificate's name as well) unless ``tls`` says otherwise."""
        tls = tls or self.client_tls("gateway")
        if token is None:
            return mtls_channel("127.0.0.1", self.server.port, tls)
        self.token_file.write_text(token)
        return mtls_channel(
            "127.0.0.1", self.server.port, tls, token=ProjectedToken(self.token_file)
        )

    def client_tls(self, name: str) -> CertificateFiles:
        """A certificate of CN ``name`` from the server's CA (identity checks it too)."""
        issued = DevCA(self.tls.paths[2].parent).issue(name)
        return CertificateFiles(issued.cert, issued.key, issued.ca)


@pytest.fixture
def issuer() -> Iterator[Issuer]:
    with serve_issuer() as running:
        yield running


@pytest.fixture
async def env(tmp_path: Path, issuer: Issuer) -> AsyncIterator[Env]:
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    await store.migrate()
    identity = IdentityService(
        store=store, settings=IdentitySettings(), keyring=KeyRing(tmp_path / "keys")
    )
    issued = DevCA(tmp_path / "tls").issue("api")
    tls = CertificateFiles(issued.cert, issued.key, issued.ca)
    verifier = ServiceTokenVerifier(
        issuer=issuer.url,
        audience="stockade-api",
        namespace="stockade",
        allow=MethodAllowList(
            {
                DECIDE: ["stockade-gateway"],
                DECIDE_STREAM: ["stockade-gateway"],
                GET_JWKS: ["stockade-broker"],
            }
        ),
        jwks_url=issuer.url + "/jwks.json",
    )
    events = Events()
    server = RpcServer(
        identity=identity,
        authorizer=Authorizer(settings=AuthzSettings()),
        tls=tls,
        admin_socket=tmp_path / "run" / "admin.sock",
        interceptors=[ServiceAuthInterceptor(verifier, publisher=events)],
        publisher=events,
    )
    await server.start()
    try:
        yield Env(server, issuer, tls, tmp_path / "token", events, tmp_path / "run" / "admin.sock")
    finally:
        await server.stop(0)
        await verifier.aclose()
        await store.close()


def _doc() -> dict[str, Any]:
    return build_input(
        "ssh.shell",
        Resource(kind="workspace", name="alice", owner="alice"),
        Context(user=Subject(name="alice", roles=("developer",)), source_ip="127.0.0.1"),
    )


def _decide_request() -> authz_pb2.DecideRequest:
    return authz_pb2.DecideRequest(input_json=json.dumps(_doc()))


async def _decide(channel: aio.Channel) -> Any:
    return await authz_pb2_grpc.AuthzStub(channel).Decide(_decide_request(), timeout=10)


async def _refused(env: Env, token: str | None) -> aio.AioRpcError:
    async with env.channel(token) as channel:
        with pytest.raises(aio.AioRpcError) as caught:
            await _decide(channel)
    return caught.value


async def test_allowed_caller_decides(env: Env) -> None:
    async with env.channel(env.issuer.token(audience="stockade-api")) as channel:
        reply = await _decide(channel)
    assert reply.allow is True
    assert env.events.seen == []


async def test_no_token_unauthenticated(env: Env) -> None:
    err = await _refused(env, None)
    assert err.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "no-token" in (err.details() or "")
    (event,) = env.events.seen
    assert isinstance(event, ServiceCallRejected)
    assert (event.method, event.reason, event.status) == (DECIDE, "no-token", "UNAUTHENTICATED")


async def test_other_audience_unauthenticated(env: Env) -> None:
    err = await _refused(env, env.issuer.token(audience="vault"))
    assert err.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "wrong-audience" in (err.details() or "")


async def test_other_namespace_denied(env: Env) -> None:
    err = await _refused(env, env.issuer.token(audience="stockade-api", namespace="tenant-a"))
    assert err.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "wrong-namespace" in (err.details() or "")


async def test_other_service_account_denied(env: Env) -> None:
    token = env.issuer.token(audience="stockade-api", service_account="default")
    err = await _refused(env, token)
    assert err.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "wrong-service" in (err.details() or "")


async def test_expired_unauthenticated(env: Env) -> None:
    import time

    token = env.issuer.token(audience="stockade-api", now=time.time() - 3600, lifetime=600)
    err = await _refused(env, token)
    assert err.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "expired" in (err.details() or "")


async def test_foreign_signed_unauthenticated(env: Env) -> None:
    stranger = Issuer(url=env.issuer.url)
    stranger.add_key()
    err = await _refused(env, stranger.token(audience="stockade-api"))
    assert err.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "unknown-key" in (err.details() or "")


async def test_method_not_allowed_denied(env: Env) -> None:
    """The broker may fetch the JWKS but not ask for decisions, and the reverse for the gateway."""
    broker = env.issuer.token(audience="stockade-api", service_account="stockade-broker")
    err = await _refused(env, broker)
    assert err.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "method-not-allowed" in (err.details() or "")
    async with env.channel(broker, tls=env.client_tls("broker")) as channel:
        jwks = await identity_pb2_grpc.IdentityStub(channel).GetJwks(identity_pb2.Empty())
        assert jwks is not None
    gateway = env.issuer.token(audience="stockade-api")
    async with env.channel(gateway) as channel:
        with pytest.raises(aio.AioRpcError) as caught:
            await identity_pb2_grpc.IdentityStub(channel).GetJwks(identity_pb2.Empty())
    assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED


async def test_a_deciders_token_does_not_open_authz_to_another_certificate(env: Env) -> None:
    """ATTACK: a shield holding the gateway's projected token (or a token layer that lets it
    through) still presents a shield certificate: authz's own table of callers refuses it,
    PERMISSION_DENIED and audited, on a call and on the stream."""
    gateway = env.issuer.token(audience="stockade-api")
    async with env.channel(gateway, tls=env.client_tls("shield")) as channel:
        with pytest.raises(aio.AioRpcError) as caught:
            await _decide(channel)
        denied = await AuthzClient(channel, target="authz").decide_async(_doc())
    assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "needs a certificate of" in (caught.value.details() or "")
    assert not denied.allow
    assert "permission_denied" in denied.reasons[0]
    seen = [(e.method, e.reason, e.caller) for e in env.events.seen]
    assert seen == [(DECIDE, "not_allowed", "shield"), (DECIDE_STREAM, "not_allowed", "shield")]


async def test_a_deciders_certificate_still_needs_its_token(env: Env) -> None:
    """The certificate table does not replace the token layer: the broker's certificate may
    decide, but its token's allow-list here names the gateway only, and no token is no call."""
    broker = env.issuer.token(audience="stockade-api", service_account="stockade-broker")
    for token in (broker, None):
        async with env.channel(token, tls=env.client_tls("broker")) as channel:
            with pytest.raises(aio.AioRpcError) as caught:
                await _decide(channel)
        assert caught.value.code() in {
            grpc.StatusCode.PERMISSION_DENIED,
            grpc.StatusCode.UNAUTHENTICATED,
        }
    assert [e.reason for e in env.events.seen] == ["method-not-allowed", "no-token"]


async def test_decision_stream_checked_like_a_call(env: Env) -> None:
    """DecideStream has its own allow-list entry: the broker, allowed neither, is refused (and
    audited); its decisions are denies naming the status."""
    async with env.channel(env.issuer.token(audience="stockade-api")) as channel:
        assert (await AuthzClient(channel, target="authz").decide_async(_doc())).allow
    broker = env.issuer.token(audience="stockade-api", service_account="stockade-broker")
    async with env.channel(broker) as channel:
        denied = await AuthzClient(channel, target="authz").decide_async(_doc())
    assert not denied.allow
    assert "authz service at authz failed: permission_denied" in denied.reasons[0]
    (event,) = env.events.seen
    assert isinstance(event, ServiceCallRejected)
    assert (event.method, event.reason) == (DECIDE_STREAM, "method-not-allowed")


async def test_a_decision_stream_does_not_outlive_its_token(env: Env) -> None:
    """ATTACK: the token is verified when a stream opens. A revoked (here: rewritten) token must
    stop deciding within the client's stream age, not live on in one long stream."""
    async with env.channel(env.issuer.token(audience="stockade-api")) as channel:
        client = AuthzClient(channel, target="authz", stream_age=0.2)
        assert (await client.decide_async(_doc())).allow
        env.token_file.write_text(env.issuer.token(audience="someone-else"))
        await asyncio.sleep(0.3)
        denied = await client.decide_async(_doc())
    assert not denied.allow
    assert "unauthenticated" in denied.reasons[0]


async def test_a_raw_decision_stream_ends_when_its_token_expires(env: Env) -> None:
    """ATTACK: a hostile caller does not retire its stream: it opens one with a token about to
    expire and keeps writing frames on it. The server held it for MAX_STREAM_AGE (60 s) whatever
    the token's exp; a frame that arrives after exp (plus leeway) must get no decision."""
    import time

    # exp + the verifier's 5 s leeway is one second from now
    token = env.issuer.token(audience="stockade-api", now=time.time() - 100, lifetime=96)
    async with env.channel(token) as channel:
        call = authz_pb2_grpc.AuthzStub(channel).DecideStream()
        frame = authz_pb2.DecideFrame(ids=[1], inputs=[json.dumps(_doc()).encode()])
        await call.write(frame)
        first = await call.read()
        assert isinstance(first, authz_pb2.DecisionFrame)
        assert first.decisions[0].allow
        await asyncio.sleep(1.5)
        await call.write(authz_pb2.DecideFrame(ids=[2], inputs=[json.dumps(_doc()).encode()]))
        late = await call.read()
        assert not isinstance(late, authz_pb2.DecisionFrame)  # the stream ended unanswered
        call.cancel()


async def test_token_file_reread_every_call(env: Env) -> None:
    """kubelet rewrites the file: the next call on the same channel presents the new token."""
    async with env.channel(env.issuer.token(audience="stockade-api")) as channel:
        assert (await _decide(channel)).allow
        env.token_file.write_text(env.issuer.token(audience="someone-else"))
        with pytest.raises(aio.AioRpcError) as caught:
            await _decide(channel)
        assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
        env.token_file.write_text(env.issuer.token(audience="stockade-api"))
        assert (await _decide(channel)).allow


async def test_missing_token_file_fails_the_call(env: Env) -> None:
    async with env.channel(env.issuer.token(audience="stockade-api")) as channel:
        env.token_file.unlink()
        with pytest.raises(aio.AioRpcError) as caught:
            await _decide(channel)
    assert caught.value.code() is not grpc.StatusCode.OK


async def test_admin_socket_and_health_exempt(env: Env) -> None:
    async with admin_channel(env.admin) as channel:
        assert (await _decide(channel)).allow
    async with env.channel(None) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "stockade.authz.v1.Authz", "stockade.identity.v1.Identity"):
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(aio.AioRpcError) as caught:
            await stub.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=5)
        assert caught.value.code() is grpc.StatusCode.NOT_FOUND


async def test_health_not_serving_once_stopping(env: Env) -> None:
    await env.server.health.enter_graceful_shutdown()
    async with env.channel(None) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5
        )
    assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING


async def test_rejection_audited_on_the_real_bus(
    tmp_path: Path, issuer: Issuer, nats_url: str
) -> None:
    """A refused call lands in the audit stream (JetStream) as ServiceCallRejected."""
    from datetime import timedelta

    from stockade.bus import Bus
    from stockade.core.events import SUBJECT_SERVICE_REJECTED, utcnow

    bus = await Bus.connect(nats_url, name="service-auth-test")
    await bus.ensure_streams()
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    await store.migrate()
    identity = IdentityService(
        store=store, settings=IdentitySettings(), keyring=KeyRing(tmp_path / "keys")
    )
    issued = DevCA(tmp_path / "tls").issue("api")
    tls = CertificateFiles(issued.cert, issued.key, issued.ca)
    verifier = ServiceTokenVerifier(
        issuer=issuer.url,
        audience="stockade-api",
        namespace="stockade",
        allow=MethodAllowList({DECIDE: ["stockade-gateway"]}),
        jwks_url=issuer.url + "/jwks.json",
    )
    server = RpcServer(
        identity=identity,
        authorizer=Authorizer(settings=AuthzSettings()),
        tls=tls,
        interceptors=[ServiceAuthInterceptor(verifier, publisher=bus)],
    )
    since = utcnow() - timedelta(seconds=1)
    await server.start()
    try:
        token = tmp_path / "token"
        token.write_text(issuer.token(audience="stockade-api", namespace="intruders"))
        async with mtls_channel(
            "127.0.0.1", server.port, tls, token=ProjectedToken(token)
        ) as channel:
            with pytest.raises(aio.AioRpcError) as caught:
                await _decide(channel)
        assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
        last = await bus.last_sequence("STOCKADE_AUDIT", SUBJECT_SERVICE_REJECTED)
        events = [
            ServiceCallRejected.from_bytes(d.data)
            async for d in bus.read_stream(
                "STOCKADE_AUDIT", SUBJECT_SERVICE_REJECTED, since=since, until_seq=last
            )
        ]
        assert [(e.method, e.reason, e.status) for e in events][-1] == (
            DECIDE,
            "wrong-namespace",
            "PERMISSION_DENIED",
        )
    finally:
        await server.stop(0)
        await verifier.aclose()
        await store.close()
        await bus.close()

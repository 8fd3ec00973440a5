"""BatchDecide and the batching AuthzClient over real gRPC with mutual TLS."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc import aio

from stockade.authz import Authorizer, Context, Resource, Subject, build_input
from stockade.core import InvalidInput
from stockade.core.settings import AuthzSettings, IdentitySettings
from stockade.identity import IdentityService, KeyRing
from stockade.rpc import AuthzClient, RpcServer, mtls_channel
from stockade.rpc._gen import authz_pb2, authz_pb2_grpc
from stockade.store import Store
from stockade.tls import CertificateFiles, DevCA


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[RpcServer, CertificateFiles]]:
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    await store.migrate()
    identity = IdentityService(
        store=store, settings=IdentitySettings(), keyring=KeyRing(tmp_path / "keys")
    )
    issued = DevCA(tmp_path / "tls").issue("gateway")  # authz: a caller (CALLERS)
    tls = CertificateFiles(issued.cert, issued.key, issued.ca)
    server = RpcServer(identity=identity, authorizer=Authorizer(settings=AuthzSettings()), tls=tls)
    await server.start()
    try:
        yield server, tls
    finally:
        await server.stop(0)
        await store.close()


def _doc(user: str, roles: tuple[str, ...], i: int = 0) -> dict[str, object]:
    """alice in her own workspace (allowed), or someone in alice's (denied)."""
    return build_input(
        "ssh.shell",
        Resource(kind="workspace", name="alice", owner="alice"),
        Context(user=Subject(name=user, roles=roles), session_id=f"s-{i}"),
    )


async def test_concurrent_decisions_share_calls_in_order(
    served: tuple[RpcServer, CertificateFiles],
) -> None:
    server, tls = served
    local = Authorizer(settings=AuthzSettings())
    docs = [
        _doc("alice", ("developer",), i) if i % 3 else _doc("mallory", (), i) for i in range(90)
    ]
    async with mtls_channel("127.0.0.1", server.port, tls) as channel:
        client = AuthzClient(channel, target="test", max_batch=16, max_in_flight=1)
        remote = await asyncio.gather(*(client.decide_async(d) for d in docs))
    expected = [local.decide(d) for d in docs]
    assert [d.allow for d in remote] == [d.allow for d in expected]
    assert [d.reasons for d in remote] == [d.reasons for d in expected]
    assert any(d.allow for d in remote)
    assert not all(d.allow for d in remote)
    assert client.batches < len(docs) / 4  # 90 decisions, at most 16 a call


async def test_one_at_a_time_adds_no_wait(served: tuple[RpcServer, CertificateFiles]) -> None:
    server, tls = served
    async with mtls_channel("127.0.0.1", server.port, tls) as channel:
        client = AuthzClient(channel, target="test", max_batch=16)
        for i in range(3):
            assert (await client.decide_async(_doc("alice", ("developer",), i))).allow
    assert client.batches == 3


async def test_malformed_entry_denied_others_decided(
    served: tuple[RpcServer, CertificateFiles],
) -> None:
    server, tls = served
    good = json.dumps(_doc("alice", ("developer",)))
    async with mtls_channel("127.0.0.1", server.port, tls) as channel:
        reply = await authz_pb2_grpc.AuthzStub(channel).BatchDecide(
            authz_pb2.BatchDecideRequest(
                requests=[
                    authz_pb2.DecideRequest(input_json=good),
                    authz_pb2.DecideRequest(input_json="{not json"),
                    authz_pb2.DecideRequest(input_json=json.dumps({"action": 3})),
                    authz_pb2.DecideRequest(input_json=good),
                ]
            ),
            timeout=10,
        )
    assert [r.allow for r in reply.responses] == [True, False, False, True]
    assert "authz request failed" in reply.responses[1].reasons[0]


async def test_oversized_batch_refused(served: tuple[RpcServer, CertificateFiles]) -> None:
    server, tls = served
    one = authz_pb2.DecideRequest(input_json=json.dumps(_doc("alice", ("developer",))))
    async with mtls_channel("127.0.0.1", server.port, tls) as channel:
        with pytest.raises(aio.AioRpcError) as caught:
            await authz_pb2_grpc.AuthzStub(channel).BatchDecide(
                authz_pb2.BatchDecideRequest(requests=[one] * 257), timeout=10
            )
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_unreachable_service_denies_every_waiter(
    served: tuple[RpcServer, CertificateFiles],
) -> None:
    server, tls = served
    port = server.port
    await server.stop(0)
    async with mtls_channel("127.0.0.1", port, tls) as channel:
        client = AuthzClient(channel, target="gone", timeout=1, max_batch=8)
        decisions = await asyncio.gather(
            *(client.decide_async(_doc("alice", ("developer",), i)) for i in range(10))
        )
    assert not any(d.allow for d in decisions)
    assert all("authz service at gone failed" in d.reasons[0] for d in decisions)


async def test_batch_bounds_checked() -> None:
    async with aio.insecure_channel("127.0.0.1:1") as channel:
        with pytest.raises(InvalidInput, match="max_batch"):
            AuthzClient(channel, target="x", max_batch=0)
        with pytest.raises(InvalidInput, match="max_batch"):
            AuthzClient(channel, target="x", max_batch=257)

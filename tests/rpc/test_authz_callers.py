"""Who may ask authz for decisions over mutual TLS (the identity table's attack, on authz).

Every service certificate comes from the same CA. A decision says what policy allows any user on
any resource: a shield, audit or identity certificate that may ask is a decision oracle (and a
way to load the service). Only the services that decide (gateway, broker, worktrace) may call
``Decide``, ``BatchDecide`` and ``DecideStream``; an admin certificate and the admin socket may
too; every refusal is PERMISSION_DENIED, logged and audited. Real gRPC, the dev CA.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio

from stockade.authz import Authorizer, Context, Resource, Subject, build_input
from stockade.core.events import ServiceCallRejected
from stockade.core.settings import AuthzSettings
from stockade.rpc import AuthzClient, admin_channel, mtls_channel
from stockade.rpc._gen import authz_pb2, authz_pb2_grpc

from .test_identity import ODD_NAMES, Served, _odd_certificate, served

__all__ = ["served"]

METHODS = ("Decide", "BatchDecide", "DecideStream")


def _doc() -> Any:
    """alice in her own workspace: allowed."""
    return build_input(
        "ssh.shell",
        Resource(kind="workspace", name="alice", owner="alice"),
        Context(user=Subject(name="alice", roles=("developer",)), session_id="s-1"),
    )


async def _call(channel: aio.Channel, method: str) -> bool:
    """One decision by ``method`` on ``channel`` (raw stub): whether it allowed."""
    stub = authz_pb2_grpc.AuthzStub(channel)
    raw = json.dumps(_doc())
    if method == "Decide":
        reply = await stub.Decide(authz_pb2.DecideRequest(input_json=raw), timeout=10)
        return reply.allow
    if method == "BatchDecide":
        batch = await stub.BatchDecide(
            authz_pb2.BatchDecideRequest(requests=[authz_pb2.DecideRequest(input_json=raw)]),
            timeout=10,
        )
        return batch.responses[0].allow
    call = stub.DecideStream(timeout=10)  # type: ignore[call-arg]
    await call.write(authz_pb2.DecideFrame(ids=[1], inputs=[raw.encode()]))
    answer = await asyncio.wait_for(call.read(), 10)
    await call.done_writing()
    assert isinstance(answer, authz_pb2.DecisionFrame), answer
    return answer.decisions[0].allow


async def _refused(channel: aio.Channel, method: str) -> str:
    with pytest.raises(aio.AioRpcError) as failed:
        await _call(channel, method)
    assert failed.value.code() == grpc.StatusCode.PERMISSION_DENIED, failed.value
    return failed.value.details() or ""


def _rejections(served: Served) -> list[tuple[str, str, str, str]]:
    return [
        (e.method, e.reason, e.status, e.caller)
        for e in served.events
        if isinstance(e, ServiceCallRejected)
    ]


def test_every_authz_method_is_in_the_table() -> None:
    """Fail closed by construction: a method the service gains is refused until listed, and
    the table lists no method the service does not have."""
    from stockade.rpc._authz import CALLERS

    served_methods = set(authz_pb2.DESCRIPTOR.services_by_name["Authz"].methods_by_name)
    assert set(CALLERS) == served_methods
    assert all(callers == {"gateway", "broker", "worktrace"} for callers in CALLERS.values())


@pytest.mark.parametrize("name", ["shield", "audit", "identity", "authz", "api", "console"])
@pytest.mark.parametrize("method", METHODS)
async def test_another_services_certificate_is_no_decision_oracle(
    served: Served, name: str, method: str
) -> None:
    """ATTACK: a shield (audit, identity...) certificate of the CA asks authz what policy
    allows alice, or loads it with decisions. Refused, PERMISSION_DENIED, and audited."""
    async with mtls_channel("127.0.0.1", served.server.port, served.client(name)) as channel:
        why = await _refused(channel, method)
    assert method in why, why
    assert name in why, why
    assert _rejections(served) == [
        (f"/stockade.authz.v1.Authz/{method}", "not_allowed", "PERMISSION_DENIED", name)
    ]


async def test_the_client_of_a_refused_certificate_denies(served: Served) -> None:
    """The streaming client as a shield would use it: every decision is a deny that says the
    call was refused, none an answer of policy."""
    async with mtls_channel("127.0.0.1", served.server.port, served.client("shield")) as channel:
        client = AuthzClient(channel, target="authz")
        decisions = await asyncio.gather(*(client.decide_async(_doc()) for _ in range(5)))
    assert all(not d.allow and "permission_denied" in d.reasons[0] for d in decisions)
    assert {m for m, *_ in _rejections(served)} == {"/stockade.authz.v1.Authz/DecideStream"}


@pytest.mark.parametrize("name", ["gateway", "broker", "worktrace", "admin"])
async def test_the_services_that_decide_may(served: Served, name: str) -> None:
    """The gateway, the broker and worktrace (and an admin) decide, by each method and by the
    client (stream and unary)."""
    local = Authorizer(settings=AuthzSettings())
    async with mtls_channel("127.0.0.1", served.server.port, served.client(name)) as channel:
        for method in METHODS:
            assert await _call(channel, method)
        for max_batch in (64, 1):
            client = AuthzClient(channel, target="authz", max_batch=max_batch)
            assert await client.decide_async(_doc()) == local.decide(_doc())
    assert _rejections(served) == []


@ODD_NAMES
async def test_a_certificate_with_several_common_names_or_none_is_refused(
    served: Served, tmp_path: Path, names: list[str]
) -> None:
    """ATTACK: a certificate naming ``gateway`` and ``shield`` (or ``admin`` and ``shield``)
    passes as a decider's or an admin's; one with no common name is nobody's."""
    tls = _odd_certificate(served, tmp_path, names)
    async with mtls_channel("127.0.0.1", served.server.port, tls) as channel:
        for method in METHODS:
            assert "common name" in await _refused(channel, method)
    reason = "no_common_name" if not names else "several_common_names"
    assert {r for _m, r, _s, _c in _rejections(served)} == {reason}
    assert len(_rejections(served)) == len(METHODS)


async def test_the_admin_socket_may_decide(served: Served) -> None:
    """The admin socket (file permissions, no certificate) is exempt, as for identity."""
    assert served.server.admin_socket is not None
    async with admin_channel(served.server.admin_socket) as channel:
        for method in METHODS:
            assert await _call(channel, method)
    assert _rejections(served) == []


async def test_a_stream_is_refused_before_any_frame_is_decided(served: Served) -> None:
    """DecideStream checks its caller when it opens: a refused caller's frame gets no
    decision, its stream ends PERMISSION_DENIED."""
    answers: list[Any] = []
    async with mtls_channel("127.0.0.1", served.server.port, served.client("shield")) as channel:
        call = authz_pb2_grpc.AuthzStub(channel).DecideStream(timeout=10)  # type: ignore[call-arg]
        with contextlib.suppress(aio.AioRpcError, asyncio.InvalidStateError):
            await call.write(authz_pb2.DecideFrame(ids=[1], inputs=[json.dumps(_doc()).encode()]))
        with contextlib.suppress(aio.AioRpcError):
            answers.append(await asyncio.wait_for(call.read(), 10))
        assert await call.code() == grpc.StatusCode.PERMISSION_DENIED
    assert not any(isinstance(a, authz_pb2.DecisionFrame) for a in answers)

"""DecideStream and the streaming AuthzClient over real gRPC with mutual TLS.

Server side, each hostile client is its own test: a frame over the size limit, a request id
twice, ids and inputs that do not pair up, garbage bytes, a client that never reads its answers,
a stream kept open past the age its token was checked for. Client side, the servers misbehave:
one that never answers, one that answers with the wrong ids, one that ends the stream with
decisions in flight. Every decision the client hands out in those cases is a deny, in bounded
time, and the next decision works again on a fresh stream.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio

from stockade.authz import Authorizer, Context, Resource, Subject, build_input
from stockade.core import InvalidInput
from stockade.core.settings import AuthzSettings
from stockade.rpc import AuthzClient, AuthzServicer, mtls_channel
from stockade.rpc._gen import authz_pb2, authz_pb2_grpc
from stockade.tls import CertificateFiles, DevCA, grpc_server_credentials

Serve = Callable[[Any], Awaitable[int]]


@pytest.fixture
def tls(tmp_path: Path) -> CertificateFiles:
    issued = DevCA(tmp_path / "tls").issue("gateway")  # authz: a caller (CALLERS)
    return CertificateFiles(issued.cert, issued.key, issued.ca)


@pytest.fixture
async def serve(tls: CertificateFiles) -> AsyncIterator[Serve]:
    """Start a real mTLS gRPC server around a servicer; returns its port."""
    servers: list[aio.Server] = []

    async def start(servicer: Any) -> int:
        server = aio.server()
        authz_pb2_grpc.add_AuthzServicer_to_server(servicer, server)
        port = server.add_secure_port("127.0.0.1:0", grpc_server_credentials(tls))
        await server.start()
        servers.append(server)
        return port

    try:
        yield start
    finally:
        for server in servers:
            await server.stop(0)


@pytest.fixture
def authorizer() -> Authorizer:
    return Authorizer(settings=AuthzSettings())


def _doc(user: str = "alice", roles: tuple[str, ...] = ("developer",), i: int = 0) -> Any:
    """alice in her own workspace (allowed), or someone in alice's (denied)."""
    return build_input(
        "ssh.shell",
        Resource(kind="workspace", name="alice", owner="alice"),
        Context(user=Subject(name=user, roles=roles), session_id=f"s-{i}"),
    )


def _raw(i: int = 0) -> bytes:
    return json.dumps(_doc(i=i)).encode()


async def _answers(call: Any, count: int) -> list[authz_pb2.DecisionFrame]:
    return [await asyncio.wait_for(call.read(), 10) for _ in range(count)]


async def _status(call: Any) -> grpc.StatusCode:
    code: grpc.StatusCode = await asyncio.wait_for(call.code(), 10)
    return code


# -- the server against hostile clients -------------------------------------------------------


async def test_frames_answered_in_order_and_bad_inputs_denied_alone(
    serve: Serve, tls: CertificateFiles, authorizer: Authorizer
) -> None:
    port = await serve(AuthzServicer(authorizer))
    async with mtls_channel("127.0.0.1", port, tls) as channel:
        call = authz_pb2_grpc.AuthzStub(channel).DecideStream()
        await call.write(authz_pb2.DecideFrame(ids=[7, 3], inputs=[_raw(), b"{not json"]))
        await call.write(
            authz_pb2.DecideFrame(
                ids=[9, 1, 2],
                inputs=[b"\xff\xfe", json.dumps({"action": 3}).encode(), b"[" * 100_000],
            )
        )
        first, second = await _answers(call, 2)
        await call.done_writing()
        assert await _status(call) is grpc.StatusCode.OK
    assert list(first.ids) == [7, 3]
    assert [d.allow for d in first.decisions] == [True, False]
    assert "authz request failed: input: not valid JSON" in first.decisions[1].reasons[0]
    assert list(second.ids) == [9, 1, 2]
    assert [d.allow for d in second.decisions] == [False, False, False]


async def test_oversized_frame_ends_the_stream(
    serve: Serve, tls: CertificateFiles, authorizer: Authorizer
) -> None:
    """ATTACK: one frame of 257 decisions (the limit is 256): refused, nothing decided."""
    port = await serve(AuthzServicer(authorizer))
    async with mtls_channel("127.0.0.1", port, tls) as channel:
        call = authz_pb2_grpc.AuthzStub(channel).DecideStream()
        await call.write(authz_pb2.DecideFrame(ids=range(257), inputs=[_raw()] * 257))
        assert await _status(call) is grpc.StatusCode.INVALID_ARGUMENT
        assert "at most 256" in await call.details()


async def test_duplicate_request_ids_end_the_stream(
    serve: Serve, tls: CertificateFiles, authorizer: Authorizer
) -> None:
    """ATTACK: one id twice in a frame would make two answers for one question."""
    port = await serve(AuthzServicer(authorizer))
    async with mtls_channel("127.0.0.1", port, tls) as channel:
        call = authz_pb2_grpc.AuthzStub(channel).DecideStream()
        await call.write(authz_pb2.DecideFrame(ids=[5, 6, 5], inputs=[_raw()] * 3))
        assert await _status(call) is grpc.StatusCode.INVALID_ARGUMENT
        assert "appears twice" in await call.details()


async def test_ids_without_inputs_end_the_stream(
    serve: Serve, tls: CertificateFiles, authorizer: Authorizer
) -> None:
    """ATTACK: more ids than inputs (or fewer): which answer is whose?"""
    port = await serve(AuthzServicer(authorizer))
    async with mtls_channel("127.0.0.1", port, tls) as channel:
        call = authz_pb2_grpc.AuthzStub(channel).DecideStream()
        await call.write(authz_pb2.DecideFrame(ids=[1, 2, 3], inputs=[_raw()]))
        assert await _status(call) is grpc.StatusCode.INVALID_ARGUMENT
        assert "3 ids for 1 inputs" in await call.details()


async def test_garbage_bytes_end_the_stream_and_the_server_serves_on(
    serve: Serve, tls: CertificateFiles, authorizer: Authorizer
) -> None:
    """ATTACK: bytes that are no DecideFrame at all (grpc's decoder refuses them)."""
    port = await serve(AuthzServicer(authorizer))
    async with mtls_channel("127.0.0.1", port, tls) as channel:
        raw = channel.stream_stream(
            "/stockade.authz.v1.Authz/DecideStream",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        call = raw()
        await call.write(b"\xff\xfe\x00garbage\x0a\x99")
        assert await _status(call) is not grpc.StatusCode.OK
        assert (await AuthzClient(channel, target="t").decide_async(_doc())).allow


async def test_a_client_that_never_reads_loses_its_stream(
    serve: Serve, tls: CertificateFiles, authorizer: Authorizer
) -> None:
    """ATTACK: a client writes frames and never reads the answers. Once flow control stops the
    server's writes, the server ends the stream after its write timeout instead of holding the
    coroutine and the answers for ever; other clients are served meanwhile."""
    servicer = AuthzServicer(authorizer, write_timeout=0.5)
    port = await serve(servicer)
    # no BDP probing: the receive window stays at 64 KiB, so it fills in a few hundred answers
    hostile = aio.secure_channel(
        f"127.0.0.1:{port}",
        grpc.ssl_channel_credentials(tls.material.ca, tls.material.key, tls.material.cert),
        options=[("grpc.ssl_target_name_override", "localhost"), ("grpc.http2.bdp_probe", 0)],
    )
    call = authz_pb2_grpc.AuthzStub(hostile).DecideStream()

    async def flood() -> None:
        for n in range(10_000):
            ids = range(n * 64, n * 64 + 64)
            await call.write(authz_pb2.DecideFrame(ids=ids, inputs=[b"{"] * 64))

    writer = asyncio.create_task(flood())
    try:
        deadline = time.monotonic() + 30
        while servicer.stalled_streams == 0:
            assert time.monotonic() < deadline, "the server still holds the stream"
            assert not writer.done() or writer.exception() is not None
            await asyncio.sleep(0.05)
        async with mtls_channel("127.0.0.1", port, tls) as channel:
            assert (await AuthzClient(channel, target="t").decide_async(_doc())).allow
    finally:
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
        await hostile.close()


async def test_a_stream_is_not_used_past_its_age(
    serve: Serve, tls: CertificateFiles, authorizer: Authorizer
) -> None:
    """ATTACK: a client keeps one stream open for ever, so its token (checked when the stream
    opened) is never checked again. The server ends the stream at its age instead of deciding."""
    port = await serve(AuthzServicer(authorizer, max_stream_age=0.3))
    async with mtls_channel("127.0.0.1", port, tls) as channel:
        call = authz_pb2_grpc.AuthzStub(channel).DecideStream()
        await call.write(authz_pb2.DecideFrame(ids=[1], inputs=[_raw()]))
        (answer,) = await _answers(call, 1)
        assert answer.decisions[0].allow
        await asyncio.sleep(0.4)
        await call.write(authz_pb2.DecideFrame(ids=[2], inputs=[_raw()]))
        assert await asyncio.wait_for(call.read(), 10) is aio.EOF


# -- the client against misbehaving servers ---------------------------------------------------


class Silent(authz_pb2_grpc.AuthzServicer):
    """Reads every frame and answers none (a hung server, a black-holed connection)."""

    def __init__(self) -> None:
        self.streams = 0

    async def DecideStream(self, requests: Any, context: Any) -> AsyncIterator[Any]:
        self.streams += 1
        async for _ in requests:
            pass
        return
        yield  # an async generator, as grpc wants for a response stream


class WrongIds(authz_pb2_grpc.AuthzServicer):
    """Answers each frame for other ids than it asked about."""

    async def DecideStream(self, requests: Any, context: Any) -> AsyncIterator[Any]:
        async for frame in requests:
            yield authz_pb2.DecisionFrame(
                ids=[i + 1 for i in frame.ids],
                decisions=[authz_pb2.DecideResponse(allow=True) for _ in frame.ids],
            )


class EndsFirstStream(AuthzServicer):
    """The first stream ends (OK, no answer) right after its first frame; later ones work."""

    def __init__(self, authorizer: Authorizer) -> None:
        super().__init__(authorizer)
        self.streams = 0

    async def DecideStream(self, requests: Any, context: Any) -> AsyncIterator[Any]:
        self.streams += 1
        if self.streams == 1:
            async for _ in requests:
                return
        async for answer in super().DecideStream(requests, context):
            yield answer


class AnswersInFours(AuthzServicer):
    """Holds its answers until four frames have arrived, then answers them in order."""

    def __init__(self, authorizer: Authorizer) -> None:
        super().__init__(authorizer)
        self.frames: list[int] = []  # decisions in each frame, as they arrived
        self.arrived = asyncio.Event()

    async def DecideStream(self, requests: Any, context: Any) -> AsyncIterator[Any]:
        held: list[Any] = []
        async for frame in requests:
            self.frames.append(len(frame.ids))
            self.arrived.set()
            held.append(frame)
            if len(held) == 4:
                for one in held:
                    yield authz_pb2.DecisionFrame(
                        ids=one.ids, decisions=[self._decide(raw) for raw in one.inputs]
                    )
                held = []


async def test_decisions_leave_without_waiting_for_the_answers_before_them(
    serve: Serve, tls: CertificateFiles, authorizer: Authorizer
) -> None:
    """Frames are pipelined: each decision leaves at once, alone, while up to three frames
    before it are unanswered (it used to wait for the answer, then a round trip of its own)."""
    servicer = AnswersInFours(authorizer)
    port = await serve(servicer)
    async with mtls_channel("127.0.0.1", port, tls) as channel:
        client = AuthzClient(channel, target="t", timeout=10)

        async def four() -> list[Any]:
            asked = []
            for i in range(4):
                servicer.arrived.clear()
                asked.append(asyncio.create_task(client.decide_async(_doc(i=i))))
                await servicer.arrived.wait()  # on the wire before any answer came back
            return await asyncio.gather(*asked)

        decisions = await asyncio.wait_for(four(), 10)
    assert [d.allow for d in decisions] == [True] * 4
    assert servicer.frames == [1, 1, 1, 1]
    assert client.streams == 1


async def test_a_server_that_never_answers_is_a_deny_within_the_timeout(
    serve: Serve, tls: CertificateFiles
) -> None:
    silent = Silent()
    port = await serve(silent)
    async with mtls_channel("127.0.0.1", port, tls) as channel:
        client = AuthzClient(channel, target="hung", timeout=0.5)
        started = time.monotonic()
        decisions = await asyncio.wait_for(
            asyncio.gather(*(client.decide_async(_doc(i=i)) for i in range(5))), 10
        )
        assert time.monotonic() - started < 5
        assert not any(d.allow for d in decisions)
        assert all("authz service at hung failed: deadline_exceeded" in d.reasons[0]
                   for d in decisions)  # fmt: skip
        # the stuck stream was abandoned: the next decision opens another
        assert not (await asyncio.wait_for(client.decide_async(_doc()), 10)).allow
        assert silent.streams == 2


async def test_answers_for_other_ids_are_a_deny(serve: Serve, tls: CertificateFiles) -> None:
    port = await serve(WrongIds())
    async with mtls_channel("127.0.0.1", port, tls) as channel:
        client = AuthzClient(channel, target="liar", timeout=5)
        decision = await asyncio.wait_for(client.decide_async(_doc()), 10)
    assert not decision.allow
    assert "malformed answer" in decision.reasons[0]


class Misattributes(authz_pb2_grpc.AuthzServicer):
    """Answers allow, but to the wrong frames: two frames answered in reverse order, an
    answer sent twice (a deny, then an allow), an answer missing its last decision, an
    answer before any frame was asked, or an allow for the next id before it was asked."""

    def __init__(self, how: str) -> None:
        self.how = how

    @staticmethod
    def _answer(ids: Any, allow: bool) -> Any:
        return authz_pb2.DecisionFrame(
            ids=ids, decisions=[authz_pb2.DecideResponse(allow=allow) for _ in ids]
        )

    async def DecideStream(self, requests: Any, context: Any) -> AsyncIterator[Any]:
        held: list[Any] = []
        if self.how == "unasked":
            yield self._answer([1], True)
        async for frame in requests:
            ids = list(frame.ids)
            if self.how == "reversed":
                held.append(ids)
                if len(held) == 2:
                    yield self._answer(held[1], True)
                    yield self._answer(held[0], True)
                    held = []
            elif self.how == "twice":
                yield self._answer(ids, False)
                yield self._answer(ids, True)
            elif self.how == "truncated":
                yield self._answer(ids[:-1], True)
            elif self.how == "ahead":
                yield self._answer(ids, False)
                yield self._answer([max(ids) + 1], True)
            else:
                yield self._answer(ids, True)


@pytest.mark.parametrize("how", ["reversed", "twice", "truncated", "unasked", "ahead"])
async def test_an_answer_for_another_frame_is_never_taken_for_this_ones(
    serve: Serve, tls: CertificateFiles, how: str
) -> None:
    """ATTACK (a buggy or hostile authz server, with frames pipelined): answers reordered,
    repeated, cut short, unasked or ahead of their question. No allow ever reaches a decision
    it was not the answer to: each such stream is a deny for every decision on it, in bounded
    time, and the next decisions get the same treatment on fresh streams."""
    port = await serve(Misattributes(how))
    async with mtls_channel("127.0.0.1", port, tls) as channel:
        client = AuthzClient(channel, target="liar", timeout=1)
        for _ in range(3):
            decisions = await asyncio.wait_for(
                asyncio.gather(*(client.decide_async(_doc(i=i)) for i in range(6))), 10
            )
            assert not any(d.allow for d in decisions), [d.reasons for d in decisions]


async def test_a_stream_ended_under_a_decision_denies_it_and_the_next_reconnects(
    serve: Serve, tls: CertificateFiles, authorizer: Authorizer
) -> None:
    servicer = EndsFirstStream(authorizer)
    port = await serve(servicer)
    async with mtls_channel("127.0.0.1", port, tls) as channel:
        client = AuthzClient(channel, target="flaky", timeout=5)
        first = await asyncio.wait_for(client.decide_async(_doc()), 10)
        assert not first.allow
        assert "ended with decisions unanswered" in first.reasons[0]
        assert (await asyncio.wait_for(client.decide_async(_doc()), 10)).allow
    assert servicer.streams == 2


async def test_a_stopped_server_denies_then_a_restarted_one_decides(
    tls: CertificateFiles, authorizer: Authorizer
) -> None:
    def make() -> aio.Server:
        server = aio.server()
        authz_pb2_grpc.add_AuthzServicer_to_server(AuthzServicer(authorizer), server)
        return server

    server = make()
    port = server.add_secure_port("127.0.0.1:0", grpc_server_credentials(tls))
    await server.start()
    async with mtls_channel("127.0.0.1", port, tls) as channel:
        client = AuthzClient(channel, target="restarting", timeout=2)
        assert (await client.decide_async(_doc())).allow
        await server.stop(0)
        down = await asyncio.wait_for(client.decide_async(_doc()), 10)
        assert not down.allow
        assert "authz service at restarting failed" in down.reasons[0]
        server = make()
        server.add_secure_port(f"127.0.0.1:{port}", grpc_server_credentials(tls))
        await server.start()
        try:
            deadline = time.monotonic() + 20
            while not (await client.decide_async(_doc())).allow:  # the channel's backoff
                assert time.monotonic() < deadline, "the client never reconnected"
                await asyncio.sleep(0.2)
        finally:
            await server.stop(0)


# -- the client's own behaviour ---------------------------------------------------------------


async def test_streams_rotate_without_a_failed_decision(
    serve: Serve, tls: CertificateFiles, authorizer: Authorizer
) -> None:
    """New streams every 50 ms under a steady load: in-flight frames drain on the old one."""
    port = await serve(AuthzServicer(authorizer))
    docs = [_doc(i=i) if i % 3 else _doc("mallory", (), i) for i in range(300)]
    async with mtls_channel("127.0.0.1", port, tls) as channel:
        client = AuthzClient(channel, target="t", stream_age=0.05, max_in_flight=2)
        remote = []
        for start in range(0, len(docs), 10):
            remote += await asyncio.gather(*(client.decide_async(d) for d in docs[start:][:10]))
            await asyncio.sleep(0.005)
    assert [d.allow for d in remote] == [authorizer.decide(d).allow for d in docs]
    assert [d.reasons for d in remote] == [authorizer.decide(d).reasons for d in docs]
    assert client.streams > 3


async def test_a_cancelled_caller_leaves_the_stream_to_the_others(
    serve: Serve, tls: CertificateFiles, authorizer: Authorizer
) -> None:
    port = await serve(AuthzServicer(authorizer))
    async with mtls_channel("127.0.0.1", port, tls) as channel:
        client = AuthzClient(channel, target="t")
        assert (await client.decide_async(_doc())).allow
        doomed = asyncio.create_task(client.decide_async(_doc(i=1)))
        others = [asyncio.create_task(client.decide_async(_doc(i=i))) for i in range(2, 40)]
        await asyncio.sleep(0)
        doomed.cancel()
        decisions = await asyncio.wait_for(asyncio.gather(*others), 10)
        assert all(d.allow for d in decisions)
        assert (await client.decide_async(_doc())).allow
    assert client.streams == 1


async def test_obligations_round_trip(
    serve: Serve, tls: CertificateFiles, authorizer: Authorizer
) -> None:
    """The remembered wire forms of obligations give back what the authorizer decided."""
    port = await serve(AuthzServicer(authorizer))
    cases = [_doc(roles=r) for r in [("developer",), ("contractor",), ("sudoer",), ()]] * 3
    async with mtls_channel("127.0.0.1", port, tls) as channel:
        client = AuthzClient(channel, target="t")
        for doc in cases:
            assert await client.decide_async(doc) == authorizer.decide(doc)


async def test_unencodable_input_is_a_deny_without_a_call() -> None:
    async with aio.insecure_channel("127.0.0.1:1") as channel:
        client = AuthzClient(channel, target="x")
        decision = await client.decide_async({"action": "ssh.shell", 1: object()})
    assert not decision.allow
    assert "authz request failed" in decision.reasons[0]
    assert client.batches == 0


async def test_bounds_checked() -> None:
    async with aio.insecure_channel("127.0.0.1:1") as channel:
        for field, kwargs in [
            ("max_in_flight", {"max_in_flight": 0}),
            ("timeout", {"timeout": 0}),
            ("stream_age", {"stream_age": -1}),
        ]:
            with pytest.raises(InvalidInput, match=field):
                AuthzClient(channel, target="x", **kwargs)


_PATCH_VALUES = [True, 1, 1.0, False, 0]


class _PatchEcho:
    """An authorizer whose allow patches ``/spec/value`` with ``_PATCH_VALUES[i]`` for session
    ``s-<i>``: the obligations differ between callers only by the JSON type of one value."""

    def decide(self, input_doc: Any) -> Any:
        from stockade.authz import Decision

        value = _PATCH_VALUES[int(input_doc["context"]["session_id"][2:])]
        return Decision.from_parts(True, {"patch:/spec/value": value})


async def test_patch_values_equal_in_python_are_not_shared_between_callers(
    serve: Serve, tls: CertificateFiles
) -> None:
    """ATTACK: the server remembers the wire form of each obligations value; True == 1 == 1.0
    (and False == 0) in Python, so one caller's patch ``1`` was answered to another as
    ``true``: obligations crossing between callers. Each caller gets its own value back."""
    port = await serve(AuthzServicer(_PatchEcho()))  # type: ignore[arg-type]
    async with mtls_channel("127.0.0.1", port, tls) as channel:
        client = AuthzClient(channel, target="t")
        for i, value in enumerate(_PATCH_VALUES):
            decision = await client.decide_async(_doc(i=i))
            (patch,) = decision.obligations.patches
            assert patch == ("/spec/value", value)
            assert type(patch[1]) is type(value)


async def test_an_expired_client_certificate_stops_deciding_on_its_open_connection(
    tmp_path: Path, tls: CertificateFiles, authorizer: Authorizer
) -> None:
    """ATTACK: mTLS checks the client certificate at the handshake only. A caller whose
    certificate expires keeps its HTTP/2 connection open and goes on deciding (unary and on
    fresh streams) for ever. The server ages connections out, so the next handshake refuses
    the expired certificate and its decisions are denies."""
    from datetime import timedelta

    from stockade.rpc import RpcServer

    ca = DevCA(tmp_path / "tls")  # the CA of the ``tls`` fixture
    cert, key = ca.mint("gateway", lifetime=timedelta(seconds=2))
    (tmp_path / "gw.pem").write_bytes(cert)
    (tmp_path / "gw.key").write_bytes(key)
    (tmp_path / "gw.key").chmod(0o600)
    client_tls = CertificateFiles(tmp_path / "gw.pem", tmp_path / "gw.key", ca.ca_cert_path)
    server = RpcServer(identity=None, authorizer=authorizer, tls=tls, max_connection_age=0.5)
    await server.start()
    try:
        async with mtls_channel("127.0.0.1", server.port, client_tls) as channel:
            client = AuthzClient(channel, target="authz", timeout=1.0)
            assert (await client.decide_async(_doc())).allow
            await asyncio.sleep(3)  # the certificate has expired; the channel is the same
            denied = await client.decide_async(_doc())
        assert not denied.allow
        assert "authz service at authz failed" in denied.reasons[0]
    finally:
        await server.stop(0)

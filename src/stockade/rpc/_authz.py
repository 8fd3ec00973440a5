"""The authz service over gRPC: a servicer around :class:`Authorizer` and a client with its
asynchronous interface (``decide_async``), so callers cannot tell one process from two.

The client never raises for a decision: an unreachable service, a deadline, a broken stream or a
malformed answer is a deny whose reason says so (docs/architecture.md: an unreachable authz
service never allows).

Transport. In grpc's Python layer a call costs several times the CPU of a message on a call that
is already open, on both ends; at 1,000 decisions/s one call per decision keeps the client busy
enough that decisions queue behind each other. So decisions travel on a ``DecideStream``: the
client writes frames of (id, input document) and the server answers each frame, in order, with
the same ids. Inputs are JSON bytes (orjson) and obligations are serialised once per distinct
value, not once per decision.

Batching is adaptive: a decision asked while fewer than ``max_in_flight`` frames await their
answer leaves at once, alone; otherwise it waits for the next answer and leaves with everything
queued behind it (up to ``max_batch``). An idle client adds no latency; a busy one pays one
message per batch instead of one per decision. Frames are pipelined (``max_in_flight`` 4 by
default): with one frame in flight, a decision asked while another was on the wire waited for
that answer and then a whole round trip of its own, about one decision in eight at 1,000/s,
which made the remote p99; a frame that follows another reaches a server that is usually still
awake, so pipelining costs no more CPU than the batch it replaces (bench/bench_rpc.py).

Streams are short-lived on purpose. Each is retired after ``stream_age`` seconds (in-flight frames
are still answered on it, new ones go on a fresh stream), so the caller's service token, the
per-method allow-list and a rotated certificate (:class:`ReloadingChannel`) are checked again
that often, as they would be for every unary call; the server ends any stream older than
:data:`MAX_STREAM_AGE` whoever the client is. A stream that breaks denies every decision on it or
queued for it at once (the reason names the status) and the next decision opens a new one; a
decision unanswered after ``timeout`` is denied and its stream abandoned, so nothing ever waits
longer than ``timeout``.

``max_batch`` 1 sends one unary ``Decide`` per decision (no stream), for allow-lists that permit
only ``Decide``. ``BatchDecide`` stays served for clients that batch over unary calls.

Callers. A decision tells what policy allows any user on any resource, and a decision costs the
authz service CPU: only the services that ask (:data:`CALLERS`, by the caller certificate's one
common name, as identity's table; see :mod:`._callers`) may call, an admin certificate and the
admin socket too; a method not listed is open to none of them. A stream is checked when it
opens (the client opens a new one every ``stream_age``). Each refusal is PERMISSION_DENIED with
its reason, logged (``authz.call_refused``) and audited (``service.rejected``).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping
from types import MappingProxyType
from typing import Any

import grpc
import orjson
from grpc import aio

from stockade.authz import Authorizer, Decision, Obligations, parse_input
from stockade.core import InvalidInput, StockadeError, get_logger

from ._callers import Publisher, name_refusal, report_refusal
from ._errors import rpc_errors_to_status
from ._gen import authz_pb2, authz_pb2_grpc
from ._service_auth import current_service

__all__ = ["AuthzClient", "AuthzServicer"]

log = get_logger("stockade.rpc.authz")

#: The most decisions one ``BatchDecide`` request or ``DecideStream`` frame may carry.
MAX_BATCH = 256

#: Seconds the server keeps one stream open: the caller's token was checked when it opened.
MAX_STREAM_AGE = 60.0

#: Seconds the server waits for a client to take an answer before it ends the stream: a client
#: that never reads must not hold the server's memory or a coroutine for ever.
WRITE_TIMEOUT = 10.0

#: Seconds a client uses one stream for new decisions (see the module docstring).
STREAM_AGE = 1.0

#: Frames a client keeps in flight on one stream before decisions wait and batch (see above).
MAX_IN_FLIGHT = 4

#: The services that ask authz (certificate common names): the gateway (logins, sessions,
#: forwards), the broker (credential requests) and worktrace (its responses to alerts), each
#: through ``cli._runtime``'s ``AuthzClient``. Shield, audit and identity ask authz nothing.
DECIDERS = frozenset({"gateway", "broker", "worktrace"})

#: Who may call each method, by the caller certificate's one common name; an admin certificate
#: and the admin socket may call them all, and a method not listed is refused to every other
#: certificate. The client decides on ``DecideStream``, on ``Decide`` with ``max_batch`` 1.
CALLERS: Mapping[str, frozenset[str]] = MappingProxyType(
    {"Decide": DECIDERS, "BatchDecide": DECIDERS, "DecideStream": DECIDERS}
)

_SERVICE = "/stockade.authz.v1.Authz/"

#: Distinct obligation values whose wire form (both ways) is remembered; policies produce few.
_SHAPES = 256


class AuthzServicer(authz_pb2_grpc.AuthzServicer):
    """Serves ``Decide``, ``BatchDecide`` and ``DecideStream`` from an in-process
    :class:`Authorizer`, evaluating on the event loop (a decision is tens of microseconds of
    CPU; a thread hop would cost more than it frees)."""

    def __init__(
        self,
        authorizer: Authorizer,
        *,
        max_stream_age: float = MAX_STREAM_AGE,
        write_timeout: float = WRITE_TIMEOUT,
        publisher: Publisher | None = None,
    ) -> None:
        self._authorizer = authorizer
        self._publisher = publisher
        #: Calls refused for their caller (see :data:`CALLERS`).
        self.refusals = 0
        self._max_stream_age = max_stream_age
        self._write_timeout = write_timeout
        #: Streams that ended because their client stopped reading (for tests and metrics).
        self.stalled_streams = 0

    async def _require(self, context: aio.ServicerContext[Any, Any], method: str) -> None:
        """End the call PERMISSION_DENIED (logged and audited) unless its caller's certificate
        may make it (:data:`CALLERS`). Every method calls this first."""
        refusal = name_refusal(context, method, CALLERS.get(method, frozenset()))
        if refusal is None:
            return
        self.refusals += 1
        await report_refusal(
            context, "authz", _SERVICE + method, method, refusal,
            publisher=self._publisher, log=log,
        )  # fmt: skip
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, refusal.why)

    @rpc_errors_to_status
    async def Decide(
        self, request: authz_pb2.DecideRequest, context: aio.ServicerContext[Any, Any]
    ) -> authz_pb2.DecideResponse:
        await self._require(context, "Decide")
        doc = parse_input(request.input_json)
        return _response(await self._authorizer.decide_async(doc))

    @rpc_errors_to_status
    async def BatchDecide(
        self, request: authz_pb2.BatchDecideRequest, context: aio.ServicerContext[Any, Any]
    ) -> authz_pb2.BatchDecideResponse:
        await self._require(context, "BatchDecide")
        if len(request.requests) > MAX_BATCH:
            raise InvalidInput("requests", f"at most {MAX_BATCH} decisions per batch")
        return authz_pb2.BatchDecideResponse(
            responses=[self._decide(one.input_json) for one in request.requests]
        )

    async def DecideStream(
        self,
        requests: AsyncIterator[authz_pb2.DecideFrame],
        context: aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[authz_pb2.DecisionFrame]:
        """Answer each frame in order; a malformed frame ends the stream (INVALID_ARGUMENT), a
        malformed input inside a good frame is a deny for that id alone. The caller is checked
        when the stream opens, before any frame is read."""
        await self._require(context, "DecideStream")
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        ends = loop.time() + self._max_stream_age
        caller = current_service()
        if caller is not None and caller.expires is not None:
            # the token was checked once, at open: the stream dies with it, not 60 s later
            ends = min(ends, loop.time() + (caller.expires - time.time()))
        async for frame in requests:
            if loop.time() >= ends:
                # the client did not retire it: its token has expired or not been checked lately
                log.info("authz.stream.aged_out", peer=context.peer())
                return
            problem = _frame_problem(frame)
            if problem is not None:
                log.warning("authz.stream.refused", reason=problem, peer=context.peer())
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
            answer = authz_pb2.DecisionFrame(
                ids=frame.ids, decisions=[self._decide(raw) for raw in frame.inputs]
            )
            stalled = loop.call_later(self._write_timeout, self._stalled, task, context)
            try:
                yield answer
            finally:
                stalled.cancel()

    def _stalled(
        self, task: asyncio.Task[Any] | None, context: aio.ServicerContext[Any, Any]
    ) -> None:
        self.stalled_streams += 1
        log.warning("authz.stream.stalled", peer=context.peer(), seconds=self._write_timeout)
        if task is not None:
            task.cancel()  # grpc ends the call as CANCELLED

    def _decide(self, raw: str | bytes) -> authz_pb2.DecideResponse:
        try:
            doc = parse_input(_loads(raw))
        except StockadeError as exc:
            return _response(Decision.deny(f"authz request failed: {exc}"))
        return _response(self._authorizer.decide(doc))


def _loads(raw: str | bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:  # bad UTF-8 and nesting too deep included
        raise InvalidInput("input", f"not valid JSON: {exc}") from None


def _frame_problem(frame: authz_pb2.DecideFrame) -> str | None:
    count = len(frame.ids)
    if count != len(frame.inputs):
        return f"frame: {count} ids for {len(frame.inputs)} inputs"
    if count > MAX_BATCH:
        return f"frame: at most {MAX_BATCH} decisions per frame, got {count}"
    if len(set(frame.ids)) != count:
        return "frame.ids: a request id appears twice"
    return None


_obligations_json: dict[Obligations, str] = {}
_obligations_parsed: dict[str, Obligations | str] = {}


def _response(decision: Decision) -> authz_pb2.DecideResponse:
    obligations = decision.obligations
    if obligations.patches:
        # patch values are any JSON, and True == 1 == 1.0, False == 0 as dict keys: a remembered
        # form would answer one caller's patch to another with another type; never remembered
        text = json.dumps(obligations.to_dict())
    else:
        remembered = _obligations_json.get(obligations)
        if remembered is not None:
            text = remembered
        else:
            text = json.dumps(obligations.to_dict())
            if len(_obligations_json) >= _SHAPES:
                _obligations_json.clear()
            _obligations_json[obligations] = text
    return authz_pb2.DecideResponse(
        allow=decision.allow, obligations_json=text, reasons=list(decision.reasons)
    )


def _decision(reply: authz_pb2.DecideResponse) -> Decision:
    """The decision in ``reply``; malformed obligations make it a deny that says so."""
    raw = reply.obligations_json or "{}"
    parsed = _obligations_parsed.get(raw)
    if parsed is None:
        parsed = _parse_obligations(raw)
        if not isinstance(parsed, Obligations) or not parsed.patches:
            # patch values may be mutable: those obligations are never shared between decisions
            if len(_obligations_parsed) >= _SHAPES:
                _obligations_parsed.clear()
            _obligations_parsed[raw] = parsed
    if isinstance(parsed, str):
        return Decision.deny(parsed)
    if not reply.allow:  # a deny carries no obligations
        return Decision(allow=False, reasons=tuple(reply.reasons))
    return Decision(allow=True, obligations=parsed, reasons=tuple(reply.reasons))


def _parse_obligations(raw: str) -> Obligations | str:
    """Typed obligations, or the reason they are refused (the deny's reason)."""
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        return f"authz service returned malformed obligations: {exc}"
    if not isinstance(value, dict):
        return "authz service returned malformed obligations"
    decision = Decision.from_parts(True, value)
    return decision.obligations if decision.allow else decision.reasons[0]


class _Stream:
    """One ``DecideStream`` call and the frames written on it, oldest first, awaiting answers."""

    __slots__ = ("broken", "call", "retired", "sent", "wake")

    def __init__(self, call: Any) -> None:
        self.call = call
        self.sent: deque[tuple[list[int], list[asyncio.Future[Decision]]]] = deque()
        self.retired = False  # no new frames: a newer stream takes them
        self.broken = False  # ended; every decision on it has its answer or a deny
        self.wake: asyncio.Future[None] | None = None  # the writer, waiting for work

    def poke(self) -> None:
        wake = self.wake
        if wake is not None and not wake.done():
            wake.set_result(None)


class AuthzClient:
    """Remote :class:`Authorizer` with the same ``decide_async``; fails closed.

    See the module docstring for the stream, the adaptive batching (``max_batch``,
    ``max_in_flight``, ``linger``) and the bounds (``timeout``, ``stream_age``). ``batches``
    counts the frames (or calls) sent.
    """

    def __init__(
        self,
        channel: aio.Channel,
        *,
        target: str,
        timeout: float = 2.0,
        max_batch: int = 64,
        max_in_flight: int = MAX_IN_FLIGHT,
        linger: float = 0.0,
        stream_age: float = STREAM_AGE,
    ) -> None:
        if not 1 <= max_batch <= MAX_BATCH:
            raise InvalidInput("max_batch", f"must be between 1 and {MAX_BATCH}")
        if max_in_flight < 1:
            raise InvalidInput("max_in_flight", "must be at least 1")
        if timeout <= 0:
            raise InvalidInput("timeout", "must be positive")
        if stream_age <= 0:
            raise InvalidInput("stream_age", "must be positive")
        self._stub = authz_pb2_grpc.AuthzStub(channel)
        self._target = target
        self._timeout = timeout
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._linger = linger
        self._stream_age = stream_age
        self._queue: deque[tuple[bytes, asyncio.Future[Decision]]] = deque()
        self._ids = itertools.count(1)
        self._stream: _Stream | None = None
        self._live: set[_Stream] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0
        self.streams = 0

    async def decide(self, input_doc: Mapping[str, Any]) -> Decision:
        """The remote counterpart of :meth:`Authorizer.decide` (awaitable; fails closed)."""
        return await self.decide_async(input_doc)

    async def decide_async(self, input_doc: Mapping[str, Any]) -> Decision:
        try:
            payload = orjson.dumps(input_doc)
        except TypeError as exc:  # orjson.JSONEncodeError too
            return Decision.deny(f"authz request failed: {exc}")
        if self._max_batch == 1:
            return await self._single(payload)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Decision] = loop.create_future()
        self._queue.append((payload, future))
        stream = self._stream
        if stream is None:
            stream = self._open(loop)
        stream.poke()
        timer = loop.call_later(self._timeout, self._expired, future)
        try:
            return await future
        finally:
            timer.cancel()

    async def _single(self, payload: bytes) -> Decision:
        self.batches += 1
        try:
            reply = await self._stub.Decide(
                authz_pb2.DecideRequest(input_json=payload.decode()), timeout=self._timeout
            )
        except aio.AioRpcError as exc:
            return self._unreachable(exc)
        return _decision(reply)

    def _unreachable(self, exc: aio.AioRpcError) -> Decision:
        log.warning(
            "authz.remote.failed", target=self._target, code=exc.code().name, details=exc.details()
        )
        return self._deny(exc.code().name.lower())

    def _deny(self, why: str) -> Decision:
        return Decision.deny(f"authz service at {self._target} failed: {why}")

    # -- the stream -------------------------------------------------------------------------

    def _open(self, loop: asyncio.AbstractEventLoop) -> _Stream:
        # The call's own deadline bounds it even if everything below went wrong: no decision is
        # sent on it after stream_age, and each has timeout to be answered.
        deadline = self._stream_age + 2 * self._timeout
        stream = _Stream(self._stub.DecideStream(timeout=deadline))  # type: ignore[call-arg]
        self._stream = stream
        self._live.add(stream)
        self.streams += 1
        loop.call_later(self._stream_age, self._retire, stream)
        for work in (self._write(stream), self._read(stream)):
            task = loop.create_task(work)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return stream

    def _retire(self, stream: _Stream) -> None:
        """New decisions go on a new stream (opened by the next one); this one drains."""
        if self._stream is stream:
            self._stream = None
        stream.retired = True
        stream.poke()
        if self._queue and self._stream is None and not stream.broken:
            self._open(asyncio.get_running_loop()).poke()

    async def _write(self, stream: _Stream) -> None:
        loop = asyncio.get_running_loop()
        queue, ids = self._queue, self._ids
        try:
            while not stream.broken:
                if stream.retired:
                    await stream.call.done_writing()
                    return
                if not queue or len(stream.sent) >= self._max_in_flight:
                    stream.wake = loop.create_future()
                    await stream.wake
                    continue
                if self._linger > 0 and len(queue) < self._max_batch:
                    await asyncio.sleep(self._linger)  # (a frame may still follow a retirement)
                frame_ids: list[int] = []
                inputs: list[bytes] = []
                futures: list[asyncio.Future[Decision]] = []
                while queue and len(frame_ids) < self._max_batch:
                    payload, future = queue.popleft()
                    if future.done():  # timed out or cancelled while queued
                        continue
                    frame_ids.append(next(ids))
                    inputs.append(payload)
                    futures.append(future)
                if not futures:
                    continue
                stream.sent.append((frame_ids, futures))
                self.batches += 1
                await stream.call.write(authz_pb2.DecideFrame(ids=frame_ids, inputs=inputs))
        except aio.AioRpcError as exc:
            self._fail(stream, self._unreachable(exc))
        except asyncio.InvalidStateError:  # the call ended under us: its reader tells why
            self._fail(stream, self._deny("the decision stream ended"))
        except asyncio.CancelledError:
            if stream.broken:  # we cancelled the call (_fail): nothing is left waiting on it
                return
            self._fail(stream, self._deny("the decision stream was cancelled"))
            raise

    async def _read(self, stream: _Stream) -> None:
        outcome = self._deny("the decision stream ended with decisions unanswered")
        try:
            while True:
                answer = await stream.call.read()
                if not isinstance(answer, authz_pb2.DecisionFrame):  # aio.EOF
                    break
                if not stream.sent:
                    outcome = self._malformed("an answer to no frame")
                    break
                ids, futures = stream.sent[0]
                if list(answer.ids) != ids or len(answer.decisions) != len(ids):
                    outcome = self._malformed("an answer whose ids are not the frame's")
                    break
                stream.sent.popleft()
                for future, reply in zip(futures, answer.decisions, strict=True):
                    if not future.done():
                        future.set_result(_decision(reply))
                if self._queue:  # the writer may wait for this answer; else it has nothing to do
                    stream.poke()
        except aio.AioRpcError as exc:
            outcome = self._unreachable(exc)
        except asyncio.CancelledError:
            outcome = self._deny("the decision stream was cancelled")
            raise
        finally:
            self._live.discard(stream)
            self._fail(stream, outcome)

    def _malformed(self, what: str) -> Decision:
        log.warning("authz.stream.malformed", target=self._target, answer=what)
        return self._deny(f"malformed answer ({what})")

    def _fail(self, stream: _Stream, decision: Decision) -> None:
        """End ``stream``: each decision still waiting on it (and, if it was the current
        stream, each queued for it) gets ``decision``, a deny; the next decision opens a new one."""
        if stream.broken:
            return
        stream.broken = True
        if self._stream is stream:
            self._stream = None
            waiting = [future for _, future in self._queue]
            self._queue.clear()
        else:
            waiting = []
        while stream.sent:
            waiting.extend(stream.sent.popleft()[1])
        for future in waiting:
            if not future.done():
                future.set_result(decision)
        stream.poke()
        if not stream.call.done():
            stream.call.cancel()

    def _expired(self, future: asyncio.Future[Decision]) -> None:
        if future.done():
            return
        log.warning("authz.remote.failed", target=self._target, code="DEADLINE_EXCEEDED")
        future.set_result(self._deny("deadline_exceeded"))
        # it waited on a stream (or behind one) that does not answer: start afresh
        for stream in list(self._live):
            if stream is self._stream or stream.sent:
                self._fail(stream, self._deny("deadline_exceeded"))

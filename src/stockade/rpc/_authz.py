"""The authz service over gRPC: a servicer around :class:`Authorizer` and a client with its
asynchronous interface (``decide_async``), so callers cannot tell one process from two.

The client never raises for a decision: an unreachable service, a deadline or a malformed answer
is a deny whose reason says so (docs/architecture.md: an unreachable authz service never allows).

Batching: with ``max_batch`` > 1 the client sends concurrent decisions together in one
``BatchDecide`` call. A decision asked while fewer than ``max_in_flight`` calls are out goes at
once (after ``linger`` seconds, 0 by default, to gather its neighbours); otherwise it waits
for the next free slot and leaves with everything queued behind it, up to ``max_batch``. So an
idle client adds no latency, and a busy one pays one round trip per batch instead of per
decision.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

from grpc import aio

from stockade.authz import Authorizer, Decision, parse_input
from stockade.core import InvalidInput, StockadeError, get_logger

from ._errors import rpc_errors_to_status
from ._gen import authz_pb2, authz_pb2_grpc

__all__ = ["AuthzClient", "AuthzServicer"]

log = get_logger("stockade.rpc.authz")


class AuthzServicer(authz_pb2_grpc.AuthzServicer):
    """Serves ``Decide`` from an in-process :class:`Authorizer`."""

    def __init__(self, authorizer: Authorizer) -> None:
        self._authorizer = authorizer

    @rpc_errors_to_status
    async def Decide(
        self, request: authz_pb2.DecideRequest, context: aio.ServicerContext[Any, Any]
    ) -> authz_pb2.DecideResponse:
        doc = parse_input(request.input_json)
        return _response(await self._authorizer.decide_async(doc))

    @rpc_errors_to_status
    async def BatchDecide(
        self, request: authz_pb2.BatchDecideRequest, context: aio.ServicerContext[Any, Any]
    ) -> authz_pb2.BatchDecideResponse:
        if len(request.requests) > MAX_BATCH:
            raise InvalidInput("requests", f"at most {MAX_BATCH} decisions per batch")
        responses = []
        for one in request.requests:
            try:
                doc = parse_input(one.input_json)
            except StockadeError as exc:
                responses.append(_response(Decision.deny(f"authz request failed: {exc}")))
                continue
            responses.append(_response(self._authorizer.decide(doc)))
        return authz_pb2.BatchDecideResponse(responses=responses)


#: The largest batch a server accepts (and a client sends).
MAX_BATCH = 256


def _response(decision: Decision) -> authz_pb2.DecideResponse:
    return authz_pb2.DecideResponse(
        allow=decision.allow,
        obligations_json=json.dumps(decision.obligations.to_dict()),
        reasons=list(decision.reasons),
    )


def _decision(reply: authz_pb2.DecideResponse) -> Decision:
    obligations = json.loads(reply.obligations_json or "{}")
    if not isinstance(obligations, dict):
        return Decision.deny("authz service returned malformed obligations")
    return Decision.from_parts(reply.allow, obligations, tuple(reply.reasons))


class AuthzClient:
    """Remote :class:`Authorizer` with the same ``decide_async``; fails closed.

    Concurrent decisions share ``BatchDecide`` calls of up to ``max_batch`` (see the module
    docstring); a decision alone goes out as one ``Decide``. ``max_batch`` 1 never batches.
    """

    def __init__(
        self,
        channel: aio.Channel,
        *,
        target: str,
        timeout: float = 2.0,
        max_batch: int = 64,
        max_in_flight: int = 2,
        linger: float = 0.0,
    ) -> None:
        if not 1 <= max_batch <= MAX_BATCH:
            raise InvalidInput("max_batch", f"must be between 1 and {MAX_BATCH}")
        if max_in_flight < 1:
            raise InvalidInput("max_in_flight", "must be at least 1")
        self._stub = authz_pb2_grpc.AuthzStub(channel)
        self._target = target
        self._timeout = timeout
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._linger = linger
        self._queue: list[tuple[str, asyncio.Future[Decision]]] = []
        self._in_flight = 0
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0

    async def decide(self, input_doc: Mapping[str, Any]) -> Decision:
        """The remote counterpart of :meth:`Authorizer.decide` (awaitable; fails closed)."""
        return await self.decide_async(input_doc)

    async def decide_async(self, input_doc: Mapping[str, Any]) -> Decision:
        try:
            payload = json.dumps(input_doc)
        except (ValueError, TypeError) as exc:
            return Decision.deny(f"authz request failed: {exc}")
        if self._max_batch == 1:
            return await self._single(payload)
        future: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()
        self._queue.append((payload, future))
        self._kick()
        return await future

    async def _single(self, payload: str) -> Decision:
        try:
            reply = await self._stub.Decide(
                authz_pb2.DecideRequest(input_json=payload), timeout=self._timeout
            )
            return _decision(reply)
        except aio.AioRpcError as exc:
            return self._unreachable(exc)
        except (ValueError, TypeError, StockadeError) as exc:
            return Decision.deny(f"authz request failed: {exc}")

    def _unreachable(self, exc: aio.AioRpcError) -> Decision:
        log.warning(
            "authz.remote.failed", target=self._target, code=exc.code().name, details=exc.details()
        )
        return Decision.deny(f"authz service at {self._target} failed: {exc.code().name.lower()}")

    def _kick(self) -> None:
        if self._scheduled or not self._queue or self._in_flight >= self._max_in_flight:
            return
        loop = asyncio.get_running_loop()
        self._scheduled = True
        if self._linger > 0 and len(self._queue) < self._max_batch:
            loop.call_later(self._linger, self._send)
        else:
            loop.call_soon(self._send)

    def _send(self) -> None:
        self._scheduled = False
        if not self._queue or self._in_flight >= self._max_in_flight:
            return
        batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch :]
        self._in_flight += 1
        task = asyncio.get_running_loop().create_task(self._batch(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self._kick()

    async def _batch(self, batch: list[tuple[str, asyncio.Future[Decision]]]) -> None:
        self.batches += 1
        try:
            if len(batch) == 1:
                results = [await self._single(batch[0][0])]
            else:
                results = await self._many([payload for payload, _ in batch])
            for (_, future), decision in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(decision)
        finally:
            for _, future in batch:
                if not future.done():
                    future.set_result(Decision.deny("authz batch failed"))
            self._in_flight -= 1
            self._kick()

    async def _many(self, payloads: list[str]) -> list[Decision]:
        request = authz_pb2.BatchDecideRequest(
            requests=[authz_pb2.DecideRequest(input_json=p) for p in payloads]
        )
        try:
            reply = await self._stub.BatchDecide(request, timeout=self._timeout)
        except aio.AioRpcError as exc:
            return [self._unreachable(exc)] * len(payloads)
        if len(reply.responses) != len(payloads):
            return [Decision.deny("authz service returned a batch of the wrong size")] * len(
                payloads
            )
        out = []
        for one in reply.responses:
            try:
                out.append(_decision(one))
            except (ValueError, TypeError) as exc:
                out.append(Decision.deny(f"authz request failed: {exc}"))
        return out

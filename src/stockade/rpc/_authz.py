"""The authz service over gRPC: a servicer around :class:`Authorizer` and a client with its
asynchronous interface (``decide_async``), so callers cannot tell one process from two.

The client never raises for a decision: an unreachable service, a deadline or a malformed answer
is a deny whose reason says so (docs/architecture.md: an unreachable authz service never allows).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from grpc import aio

from stockade.authz import Authorizer, Decision, parse_input
from stockade.core import StockadeError, get_logger

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
        decision = await self._authorizer.decide_async(doc)
        return authz_pb2.DecideResponse(
            allow=decision.allow,
            obligations_json=json.dumps(decision.obligations.to_dict()),
            reasons=list(decision.reasons),
        )


class AuthzClient:
    """Remote :class:`Authorizer` with the same ``decide_async``; fails closed."""

    def __init__(self, channel: aio.Channel, *, target: str, timeout: float = 2.0) -> None:
        self._stub = authz_pb2_grpc.AuthzStub(channel)
        self._target = target
        self._timeout = timeout

    async def decide(self, input_doc: Mapping[str, Any]) -> Decision:
        """The remote counterpart of :meth:`Authorizer.decide` (awaitable; fails closed)."""
        return await self.decide_async(input_doc)

    async def decide_async(self, input_doc: Mapping[str, Any]) -> Decision:
        try:
            reply = await self._stub.Decide(
                authz_pb2.DecideRequest(input_json=json.dumps(input_doc)),
                timeout=self._timeout,
            )
            obligations = json.loads(reply.obligations_json or "{}")
            if not isinstance(obligations, dict):
                return Decision.deny("authz service returned malformed obligations")
            return Decision.from_parts(reply.allow, obligations, tuple(reply.reasons))
        except aio.AioRpcError as exc:
            log.warning(
                "authz.remote.failed",
                target=self._target,
                code=exc.code().name,
                details=exc.details(),
            )
            return Decision.deny(
                f"authz service at {self._target} failed: {exc.code().name.lower()}"
            )
        except (ValueError, TypeError, StockadeError) as exc:
            return Decision.deny(f"authz request failed: {exc}")

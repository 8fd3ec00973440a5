"""Projected service-account tokens on gRPC: a server interceptor and client call credentials.

Server side, :class:`ServiceAuthInterceptor` wraps every method handler so that, before the
servicer runs, the caller's ``authorization: Bearer <token>`` metadata is verified by a
:class:`stockade.tls.ServiceTokenVerifier` for the called method. A rejection aborts the call with
``UNAUTHENTICATED`` or ``PERMISSION_DENIED`` and the reason (``token rejected: wrong-audience
(...)``), is logged and, with a publisher, sent to the audit stream as
:class:`~stockade.core.events.ServiceCallRejected`. The verified caller is available to the
servicer through :func:`current_service`.

mTLS stays underneath: the token says *which* service calls, the certificate that the channel is
authentic. Calls over the admin unix socket (file permissions are its authentication) and the
health service are exempt, each by a flag.

Client side, :func:`service_token_credentials` reads the projected token file on every call
(kubelet rotates it), so a long-lived channel never presents an expired token.
"""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable, Collection
from typing import Any, Protocol

import grpc
from grpc import aio

from stockade.core import StockadeError, get_logger
from stockade.core.events import Event, ServiceCallRejected
from stockade.tls import (
    ProjectedToken,
    RejectionStatus,
    ServiceIdentity,
    ServiceTokenRejected,
    ServiceTokenVerifier,
)

__all__ = [
    "HEALTH_SERVICE",
    "ServiceAuthInterceptor",
    "current_service",
    "service_token_credentials",
]

log = get_logger("stockade.rpc.service_auth")

#: Methods of the standard health service; exempt from tokens unless configured otherwise.
HEALTH_SERVICE = "/grpc.health.v1.Health/"

_current: contextvars.ContextVar[ServiceIdentity | None] = contextvars.ContextVar(
    "stockade_service_caller", default=None
)

_CODES = {
    RejectionStatus.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    RejectionStatus.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
}


class _Publisher(Protocol):
    async def publish(self, event: Event) -> Any: ...


def current_service() -> ServiceIdentity | None:
    """The verified caller of the call being served (None over an exempt path)."""
    return _current.get()


def _bearer(metadata: Any) -> str | None:
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            return token.strip() if scheme.lower() == "bearer" else None
    return None


class ServiceAuthInterceptor(aio.ServerInterceptor):  # type: ignore[type-arg]
    """Verifies a projected token on every call (see the module docstring)."""

    def __init__(
        self,
        verifier: ServiceTokenVerifier,
        *,
        publisher: _Publisher | None = None,
        exempt_unix_socket: bool = True,
        exempt_prefixes: Collection[str] = (HEALTH_SERVICE,),
    ) -> None:
        self._verifier = verifier
        self._publisher = publisher
        self._exempt_unix = exempt_unix_socket
        self._exempt = tuple(exempt_prefixes)
        self.rejections = 0

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(self._exempt):
            return handler
        return self._wrap(handler, method)

    async def _admit(self, method: str, context: aio.ServicerContext[Any, Any]) -> None:
        peer = context.peer() or ""
        if self._exempt_unix and peer.startswith("unix:"):
            return
        token = _bearer(context.invocation_metadata())
        try:
            caller = await self._verifier.verify(token, method)
        except ServiceTokenRejected as exc:
            self.rejections += 1
            log.warning("service_call.rejected", method=method, reason=exc.reason, peer=peer)
            await self._audit(method, exc, peer)
            await context.abort(_CODES[exc.status], str(exc))
        except StockadeError as exc:  # the JWKS could not be fetched: fail closed
            log.warning("service_call.unverifiable", method=method, error=str(exc))
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"cannot verify the caller: {exc}")
        else:
            _current.set(caller)

    async def _audit(self, method: str, exc: ServiceTokenRejected, peer: str) -> None:
        if self._publisher is None:
            return
        event = ServiceCallRejected(
            method=method[:256], reason=exc.reason, status=exc.status.value, peer=peer[:128]
        )
        try:
            await self._publisher.publish(event)
        except StockadeError as err:
            log.warning("service_call.audit_failed", error=str(err))

    def _wrap(self, handler: Any, method: str) -> Any:
        # grpc-stubs types handlers as synchronous; under grpc.aio their behaviours are async.
        admit = self._admit
        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary

            async def unary_unary(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
                await admit(method, context)
                return await inner_uu(request, context)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            inner_us = handler.unary_stream

            async def unary_stream(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
                await admit(method, context)
                async for item in inner_us(request, context):
                    yield item

            return grpc.unary_stream_rpc_method_handler(
                unary_stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary is not None:
            inner_su = handler.stream_unary

            async def stream_unary(requests: Any, context: aio.ServicerContext[Any, Any]) -> Any:
                await admit(method, context)
                return await inner_su(requests, context)

            return grpc.stream_unary_rpc_method_handler(
                stream_unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        inner_ss = handler.stream_stream

        async def stream_stream(requests: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            await admit(method, context)
            async for item in inner_ss(requests, context):
                yield item

        return grpc.stream_stream_rpc_method_handler(
            stream_stream,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


class _TokenPlugin(grpc.AuthMetadataPlugin):
    def __init__(self, token: ProjectedToken) -> None:
        self._token = token

    def __call__(
        self, context: grpc.AuthMetadataContext, callback: grpc.AuthMetadataPluginCallback
    ) -> None:
        try:
            value = self._token.read()
        except StockadeError as exc:
            callback((), exc)
            return
        callback((("authorization", f"Bearer {value}"),), None)


def service_token_credentials(token: ProjectedToken) -> grpc.CallCredentials:
    """Call credentials presenting the projected token in ``token`` (re-read on every call).

    Combine with channel TLS: ``grpc.composite_channel_credentials(tls, creds)``.
    """
    return grpc.metadata_call_credentials(_TokenPlugin(token), name="stockade-service-token")

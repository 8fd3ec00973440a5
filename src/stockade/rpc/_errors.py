"""StockadeError <-> gRPC status, both ways.

The server turns a :class:`StockadeError` into a status code plus trailing metadata carrying the
error's class and attributes; the client rebuilds the same class, so a caller of a remote service
sees exactly what it would see in one process. Anything else from grpc (unreachable, deadline) is
a :class:`BackendError` naming the service.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from grpc import aio

from stockade.core import errors as E
from stockade.core import get_logger

__all__ = ["from_rpc_error", "rpc_errors_to_status", "status_for"]

log = get_logger("stockade.rpc")

_CLASS_KEY = "stockade-error"
_STATE_KEY = "stockade-error-state"

_ERRORS: dict[str, type[E.StockadeError]] = {
    cls.__name__: cls
    for cls in vars(E).values()
    if isinstance(cls, type) and issubclass(cls, E.StockadeError)
}

_STATUS: list[tuple[type[E.StockadeError], grpc.StatusCode]] = [
    (E.NotFound, grpc.StatusCode.NOT_FOUND),
    (E.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (E.UserError, grpc.StatusCode.INVALID_ARGUMENT),
    (E.PolicyError, grpc.StatusCode.FAILED_PRECONDITION),
    (E.AuthenticationError, grpc.StatusCode.UNAUTHENTICATED),
    (E.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (E.BackendError, grpc.StatusCode.UNAVAILABLE),
]


def status_for(exc: E.StockadeError) -> grpc.StatusCode:
    """The gRPC status code for ``exc``."""
    for cls, code in _STATUS:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


Handler = TypeVar("Handler", bound=Callable[..., Awaitable[Any]])


def rpc_errors_to_status(method: Handler) -> Handler:
    """Decorate a servicer method: StockadeError becomes a status with its state attached."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await method(self, request, context)
        except E.StockadeError as exc:
            state = {k: v for k, v in vars(exc).items() if _jsonable(v)}
            context.set_trailing_metadata(
                ((_CLASS_KEY, type(exc).__name__), (_STATE_KEY, json.dumps(state)))
            )
            await context.abort(status_for(exc), str(exc))

    return wrapper  # type: ignore[return-value]


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def from_rpc_error(exc: aio.AioRpcError, *, service: str, target: str) -> E.StockadeError:
    """Rebuild the server's StockadeError, or a BackendError for transport failures."""
    trailing: dict[str, Any] = {}
    metadata: Any = exc.trailing_metadata() or ()  # grpc-stubs types this as opaque items
    for key, value in metadata:
        trailing[str(key)] = value
    name = trailing.get(_CLASS_KEY)
    if isinstance(name, str) and name in _ERRORS:
        cls = _ERRORS[name]
        rebuilt = cls.__new__(cls)
        Exception.__init__(rebuilt, exc.details() or name)
        raw_state = trailing.get(_STATE_KEY)
        state = json.loads(raw_state) if isinstance(raw_state, str) else {}
        rebuilt.__dict__.update(state)
        rebuilt.__dict__.setdefault("message", exc.details() or name)
        return rebuilt
    log.warning("rpc.failed", service=service, target=target, code=str(exc.code()))
    return E.BackendError(
        f"{service} service at {target} failed: {exc.code().name.lower()}"
        f" ({exc.details() or 'no details'}); is `stockade up` running?"
    )

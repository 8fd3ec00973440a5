"""The interface every caller of authz is written against.

The in-process :class:`~stockade.authz.Authorizer` and the gRPC client
(``stockade.rpc.AuthzClient``) both satisfy it, so a caller never knows which one it holds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from ._decision import Decision

__all__ = ["AuthzAPI"]


@runtime_checkable
class AuthzAPI(Protocol):
    """Decides one input document (built by :func:`~stockade.authz.build_input`).

    ``decide_async`` never raises: an evaluation error, a missing rule, a malformed answer or an
    unreachable service is a deny whose reason says so.
    """

    async def decide_async(self, input_doc: Mapping[str, Any]) -> Decision: ...

"""Asking authz: every gateway question described once, built by ``stockade.authz.build_input``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from stockade.authz import AuthzAPI, Context, Decision, Resource, Subject, build_input
from stockade.core.logging import get_logger
from stockade.identity import Principal

__all__ = ["decide", "subject_of"]

_log = get_logger("stockade.gateway.policy")


def subject_of(principal: Principal) -> Subject:
    """The policy subject for ``principal``, with the credentials they have enrolled."""
    return Subject(
        name=principal.username,
        roles=tuple(principal.roles),
        groups=tuple(principal.groups),
        auth_methods=tuple(principal.auth_methods),
    )


async def decide(
    authz: AuthzAPI,
    action: str,
    principal: Principal,
    *,
    source_ip: str,
    auth_method: str | None,
    mfa: bool = False,
    session_id: str | None = None,
    on_user: bool = False,
    extra: Mapping[str, Any] | None = None,
) -> Decision:
    """The decision on ``action`` by ``principal`` on its workspace (on the user itself with
    ``on_user``, as ``user.auth`` asks). Never raises: authz answers a deny on any failure."""
    if on_user or action == "user.auth":
        resource = Resource(kind="user", name=principal.username, owner=principal.username)
    else:
        workspace = principal.workspace
        resource = Resource(kind="workspace", name=workspace.name, owner=workspace.owner)
    context = Context(
        user=subject_of(principal),
        source_ip=source_ip,
        auth_method=auth_method,
        mfa=mfa,
        session_id=session_id,
        extra=dict(extra or {}),
    )
    result = await authz.decide_async(build_input(action, resource, context))
    if not result.allow:
        _log.info("denied", action=action, user=principal.username, reasons=list(result.reasons))
    return result

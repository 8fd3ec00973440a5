"""Asking authz: the gateway's requests described once, built by ``stockade.authz.build_input``."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from stockade.authz import Context, Resource, Subject, build_input
from stockade.core.logging import get_logger

from ._ports import AuthzPort, DecisionLike, UserLike, WorkspaceLike

__all__ = ["Policy", "subject_of"]

_log = get_logger("stockade.gateway.policy")


def subject_of(user: UserLike) -> Subject:
    """The policy subject for ``user``, with the credentials they have enrolled."""
    methods = ["publickey"]
    if getattr(user, "has_password", False):
        methods.append("password")
    if getattr(user, "totp_enabled", False):
        methods.append("totp")
    return Subject(name=user.name, roles=tuple(user.roles), groups=tuple(user.groups),
                   auth_methods=tuple(methods))  # fmt: skip


class Policy:
    """Decides gateway actions (``ssh.*``, ``user.auth``) for one source address."""

    def __init__(self, authz: AuthzPort) -> None:
        self._authz = authz

    async def decide(
        self,
        action: str,
        user: UserLike,
        *,
        workspace: WorkspaceLike | None,
        source_ip: str,
        auth_method: str | None,
        mfa: bool = False,
        session_id: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> DecisionLike:
        """The decision on ``action``; a workspace resource when given, else the user itself."""
        if workspace is not None:
            resource = Resource(kind="workspace", name=workspace.name, owner=workspace.owner)
        else:
            resource = Resource(kind="user", name=user.name, owner=user.name)
        context = Context(
            user=subject_of(user),
            source_ip=source_ip,
            auth_method=auth_method,
            mfa=mfa,
            session_id=session_id,
            extra=dict(extra or {}),
        )
        result = self._authz.decide(build_input(action, resource, context))
        if inspect.isawaitable(result):
            result = await result
        if not result.allow:
            _log.info("denied", action=action, user=user.name, reasons=list(result.reasons))
        return result

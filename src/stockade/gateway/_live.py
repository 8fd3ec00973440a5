"""The gateway's live state: which logged-in connections it holds, and ending them on demand.

One :class:`LiveConnection` per authenticated SSH connection (it is the registry's session:
shells, commands and forwards on it share its session id and token). Revocations arrive as bus
events and are applied here: a ``stockade.session.kill`` ends the session it names; an
``stockade.identity.changed`` ends every connection of a disabled or removed user, every
connection that logged in with a removed key, and re-decides ``ssh.connect`` for a user whose
roles changed, and each forward it opened (a deny ends the connection; an allow updates the roles
later channel requests are decided with).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any, Protocol

import asyncssh

from stockade.authz import AuthzAPI
from stockade.core.events import IdentityChanged, SessionKill
from stockade.core.logging import get_logger
from stockade.identity import Principal
from stockade.workspace import label_value

from ._login import Login
from ._policy import decide

__all__ = ["LiveChannel", "LiveConnection", "LiveRegistry"]

_log = get_logger("stockade.gateway.live")

#: What users read when an administrator or a revocation ends their session.
KILL_MESSAGE = "session terminated by an administrator"


class LiveChannel(Protocol):
    """A running session channel, as the registry ends it."""

    async def terminate(self, reason: str, message: str) -> None: ...


class LiveConnection:
    """One logged-in connection: its login, its registry session and what runs on it."""

    def __init__(self, login: Login, conn: asyncssh.SSHServerConnection) -> None:
        self.login = login
        self.principal: Principal = login.principal
        """The principal as of now (roles follow ``roles_changed`` events)."""
        self.conn = conn
        self.session_id = ""
        self.token = ""
        self.logged_in_at = datetime.now(UTC)
        """When the login succeeded: a kill replayed after a reconnect spares later logins."""
        self.opened: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        """True once the registry row exists (channels wait for it), False if it failed."""
        self.channels: set[LiveChannel] = set()
        self.end_reason = ""
        self.exit_status: int | None = None
        self.bytes_in = 0
        self.bytes_out = 0
        self.recording: str | None = None
        self.ended = asyncio.Event()
        self.forwards: set[tuple[str, str, int]] = set()
        """``(action, host, port)`` of every forward policy allowed on this connection (``-R``
        listeners live on; ``-L`` clients open channels again): re-decided when roles change."""
        self.deadline: asyncio.TimerHandle | None = None
        """Ends the connection at its login's ``max_session_seconds`` (cancelled at close)."""
        self._channel_numbers = 0

    @property
    def closing(self) -> bool:
        """True once the connection is being ended: no new channel or forward is allowed."""
        return bool(self.end_reason)

    def still_open(self) -> bool:
        """Asked again after an await: has nobody started ending the connection meanwhile?"""
        return not self.end_reason

    def next_channel_number(self) -> int:
        self._channel_numbers += 1
        return self._channel_numbers

    async def terminate(self, reason: str, message: str) -> None:
        """End every channel with ``message`` on stderr, then the connection (first reason
        wins)."""
        if self.end_reason:
            return
        self.end_reason = reason
        channels = list(self.channels)
        if channels:
            await asyncio.gather(
                *(channel.terminate(reason, message) for channel in channels),
                return_exceptions=True,
            )
        with contextlib.suppress(Exception):
            self.conn.disconnect(asyncssh.DISC_BY_APPLICATION, message)


class LiveRegistry:
    """Every live connection of this gateway, by session id."""

    def __init__(
        self, authz: AuthzAPI, background: Callable[[Coroutine[Any, Any, None]], None]
    ) -> None:
        self._authz = authz
        self._background = background
        self._by_id: dict[str, LiveConnection] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    @property
    def session_ids(self) -> list[str]:
        return list(self._by_id)

    def values(self) -> list[LiveConnection]:
        return list(self._by_id.values())

    def add(self, live: LiveConnection) -> None:
        self._by_id[live.session_id] = live

    def discard(self, live: LiveConnection) -> None:
        if self._by_id.get(live.session_id) is live:
            del self._by_id[live.session_id]

    async def kill(self, event: SessionKill, *, logged_in_before: datetime | None = None) -> None:
        """Apply a ``stockade.session.kill`` (ignored unless this gateway holds the session);
        ``logged_in_before``: only to connections that logged in before then (a kill replayed
        after a reconnect ends what it was published against, not a later login)."""
        targets = self._kill_targets(event)
        if logged_in_before is not None:
            targets = [v for v in targets if v.logged_in_at < logged_in_before]
        for live in targets:
            _log.info("session_killed", session=live.session_id, reason=event.reason, by=event.by)
            await live.terminate(event.reason or "killed", event.message or KILL_MESSAGE)

    def in_workspace(self, workspace: str) -> list[LiveConnection]:
        """The connections in ``workspace`` not yet being ended."""
        return [
            v
            for v in self._by_id.values()
            if v.principal.workspace.name == workspace and not v.closing
        ]

    def _kill_targets(self, event: SessionKill) -> list[LiveConnection]:
        if event.session_id == "*" and event.removed_workspace is not None:
            targets = [
                v
                for v in self._by_id.values()
                if v.principal.workspace.name == event.removed_workspace
            ]
        elif event.session_id == "*" and event.workspace_label is not None:
            targets = [
                v
                for v in self._by_id.values()
                if label_value(v.principal.workspace.name) == event.workspace_label
            ]
        elif event.session_id == "*":
            targets = [v for v in self._by_id.values() if v.principal.username == event.username]
        else:
            found = self._by_id.get(event.session_id)
            targets = [] if found is None else [found]
        return targets

    async def identity_changed(self, event: IdentityChanged) -> None:
        """Apply an ``stockade.identity.changed`` to the user's live connections."""
        mine = [live for live in self._by_id.values() if live.principal.username == event.username]
        if not mine:
            return
        if event.change in ("user_disabled", "user_removed"):
            what = "disabled" if event.change == "user_disabled" else "removed"
            for live in mine:
                await live.terminate("revoked", f"user {event.username} was {what}")
        elif event.change == "key_removed":
            for live in mine:
                if live.principal.fingerprint == event.fingerprint:
                    await live.terminate(
                        "revoked", "the key this session logged in with was removed"
                    )
        elif event.change == "roles_changed":
            for live in mine:
                await self._redecide(live, tuple(event.roles))

    async def _redecide(self, live: LiveConnection, roles: tuple[str, ...]) -> None:
        principal = dataclasses.replace(live.principal, roles=roles)
        decision = await decide(
            self._authz,
            "ssh.connect",
            principal,
            source_ip=live.login.client_ip,
            auth_method=live.login.method,
            mfa=live.login.mfa,
            session_id=live.session_id,
        )
        if not decision.allow:
            why = "; ".join(decision.reasons) or "policy no longer allows this session"
            await live.terminate("revoked", f"access withdrawn: {why}")
            return
        for action, host, port in sorted(live.forwards):
            forward = await decide(
                self._authz,
                action,
                principal,
                source_ip=live.login.client_ip,
                auth_method=live.login.method,
                mfa=live.login.mfa,
                session_id=live.session_id,
                extra={"host": host, "port": port},
            )
            if not forward.allow:
                why = "; ".join(forward.reasons) or f"policy no longer allows {action}"
                await live.terminate("revoked", f"access withdrawn: {why}")
                return
        live.principal = principal

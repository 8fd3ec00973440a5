"""The obligation hook: policy may answer an alert with ``kill_session`` or ``ban_user``.

Decide, then apply: :class:`AlertResponder` builds the policy input for action
``worktrace.respond`` with :func:`stockade.authz.build_input` and asks an injected authorizer
(anything with ``decide(input) -> Decision``: the in-process :class:`~stockade.authz.Authorizer`
or the gRPC client). The obligations of an *allowed* decision say what to do:

- ``kill_session: true`` -> a :class:`~stockade.core.events.SessionKill` on
  ``stockade.session.kill`` (the gateway ends the session);
- ``ban_user: true`` -> a :class:`~stockade.core.events.UserBan` on ``stockade.shield.user_ban``
  lasting ``ban_seconds`` (or the obligation ``ban_seconds`` when policy gives one).

Both subjects belong to the audit stream, and the decision itself goes to the decision log, so
every response is audited. An action the bus refuses stays in ``pending`` and is published
again by :meth:`AlertResponder.retry` (the service calls it periodically): a bus outage delays
a kill, it does not cancel it. A deny, an ill-typed obligation or an alert without a session (for a
kill) or a user (for a ban) applies nothing and says why in :class:`Response`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from stockade.authz import Context, Decision, Resource, Subject, build_input
from stockade.core.errors import BusUnavailable
from stockade.core.events import Event, SessionKill, UserBan
from stockade.core.logging import get_logger

from ._engine import Alert

__all__ = ["ACTION", "AlertResponder", "Authorizer", "Publisher", "Response", "respond_input"]

#: The policy action asked for every alert.
ACTION = "worktrace.respond"

_log = get_logger("stockade.worktrace")


class Authorizer(Protocol):
    """The in-process :class:`~stockade.authz.Authorizer`; :meth:`AlertResponder.respond` asks
    ``decide_async`` when there is one (the gRPC ``AuthzClient`` of ``stockade serve`` has only
    that kind), :meth:`AlertResponder.decide` the synchronous ``decide``."""

    def decide(self, input_doc: Mapping[str, Any]) -> Any: ...


class Publisher(Protocol):
    async def publish(self, event: Event, *, ack_timeout: float = ...) -> int: ...


@dataclass(frozen=True, slots=True)
class Response:
    """What was decided for one alert and what was published."""

    alert_id: str
    decision: Decision
    published: list[Event] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def respond_input(alert: Alert) -> dict[str, Any]:
    """The ``worktrace.respond`` policy input for ``alert``.

    ``resource`` is the session (``owner`` its user, ``labels`` the workspace, rule and kind);
    ``context.alert`` carries ``id``, ``kind``, ``rule``, ``name``, ``confidence`` and
    ``rules`` (of an attack path).
    """
    info = alert.session
    labels = {"kind": alert.kind, "rule": alert.rule_id}
    if info.workspace:
        labels["workspace"] = info.workspace
    if alert.pod_name:
        labels["pod"] = f"{alert.pod_namespace}/{alert.pod_name}"
    return build_input(
        ACTION,
        Resource(kind="session", name=info.session_id or "", owner=info.username, labels=labels),
        Context(
            user=Subject(name=info.username or "unknown"),
            session_id=info.session_id,
            extra={
                "alert": {
                    "id": alert.alert_id,
                    "kind": alert.kind,
                    "rule": alert.rule_id,
                    "name": alert.name,
                    "confidence": float(alert.confidence),
                    "rules": list(alert.rules),
                }
            },
        ),
    )


class AlertResponder:
    """Asks policy how to answer each alert and publishes the resulting actions."""

    def __init__(
        self,
        authz: Authorizer,
        bus: Publisher,
        *,
        ban_seconds: float = 3600.0,
        by: str = "worktrace",
        max_pending: int = 10_000,
    ) -> None:
        self.authz = authz
        self.bus = bus
        self.ban_seconds = ban_seconds
        self.by = by
        #: Actions decided but refused by the bus, oldest first (bounded: the oldest goes).
        self.pending: deque[Event] = deque(maxlen=max_pending)
        self._sending = asyncio.Lock()  # one retry round at a time

    def decide(self, alert: Alert) -> tuple[Decision, list[Event], list[str]]:
        """The decision and the events it calls for (nothing is published here)."""
        return self.actions(alert, self.authz.decide(respond_input(alert)))

    async def decide_async(self, alert: Alert) -> tuple[Decision, list[Event], list[str]]:
        """:meth:`decide` through the authorizer's ``decide_async`` when it has one."""
        ask = getattr(self.authz, "decide_async", None)
        if ask is None:
            return self.decide(alert)
        return self.actions(alert, await ask(respond_input(alert)))

    def actions(self, alert: Alert, decision: Decision) -> tuple[Decision, list[Event], list[str]]:
        """The events ``decision`` calls for, and what it could not apply."""
        events: list[Event] = []
        skipped: list[str] = []
        if not decision.allow:
            skipped.append("denied: " + "; ".join(decision.reasons))
            return decision, events, skipped
        # typed once by authz: an ill-typed obligation already made the decision a deny
        obligations = decision.obligations
        kill, ban = obligations.kill_session, obligations.ban_user
        seconds = obligations.ban_seconds or self.ban_seconds
        reason = f"worktrace {alert.kind} {alert.rule_id} ({alert.confidence:.2f})"
        info = alert.session
        if kill:
            if info.session_id == "*":  # the SessionKill wildcard: every session of the user
                skipped.append("kill_session: the alert's session id is the wildcard *")
            elif info.session_id:
                events.append(
                    SessionKill(
                        session_id=info.session_id,
                        username=info.username,
                        reason=reason[:256],
                        message=f"session ended by Worktrace: {reason}"[:256],
                        by=self.by,
                    )
                )
            elif info.workspace:  # a Pod's alert: the Pod serves every session of it
                events.append(
                    SessionKill(
                        session_id="*",
                        workspace_label=info.workspace,
                        reason=reason[:256],
                        message=f"session ended by Worktrace: {reason}"[:256],
                        by=self.by,
                    )
                )
            else:
                skipped.append("kill_session: the alert has no session")
        if ban:
            if info.username:
                events.append(
                    UserBan(
                        username=info.username,
                        until=datetime.now(UTC) + timedelta(seconds=float(seconds)),
                        reason=reason,
                        by=self.by,
                    )
                )
            else:
                skipped.append("ban_user: the alert has no user")
        return decision, events, skipped

    async def respond(self, alert: Alert) -> Response:
        """Decide and publish; a publish failure is logged, reported in ``skipped`` and the
        action kept in ``pending`` for :meth:`retry`."""
        decision, events, skipped = await self.decide_async(alert)
        published: list[Event] = []
        for event in events:
            if self.pending:  # keep the order: older refused actions go first
                self.pending.append(event)
                skipped.append(f"{event.subject}: queued behind actions the bus refused")
                continue
            try:
                await self.bus.publish(event)
            except BusUnavailable as exc:
                self.pending.append(event)
                skipped.append(f"{event.subject}: {exc}")
                _log.error("worktrace.response_failed", subject=event.subject, error=str(exc))
            else:
                published.append(event)
                _log.warning(
                    "worktrace.response",
                    subject=event.subject,
                    alert=alert.alert_id,
                    rule=alert.rule_id,
                )
        if self.pending:
            await self.retry()
        return Response(alert.alert_id, decision, published, skipped)

    async def retry(self) -> list[Event]:
        """Publish the pending actions, oldest first (the first refused one stops the round);
        returns those published."""
        async with self._sending:
            return await self._send()

    async def _send(self) -> list[Event]:
        published: list[Event] = []
        pending = self.pending
        while pending:
            event = pending[0]
            try:
                await self.bus.publish(event)
            except BusUnavailable as exc:
                _log.warning(
                    "worktrace.response_retry_failed", subject=event.subject, error=str(exc)
                )
                break
            pending.popleft()
            published.append(event)
            _log.warning("worktrace.response", subject=event.subject, retried=True)
        return published

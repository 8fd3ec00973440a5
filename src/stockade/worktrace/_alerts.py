"""Alerts leave the engine as ``WorktraceAlert`` events: on the bus, and so in the audit trail.

The alerts store is the bus: ``stockade.worktrace.alert`` belongs to the ``STOCKADE_AUDIT``
JetStream stream (kept as long as the stream keeps events, 7 days by default), which the audit
store consumes like every other audited subject; :func:`read_alerts` reads them back for
``stockade worktrace alerts``. No table of its own.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Protocol

from stockade.bus import Bus
from stockade.core.errors import BusUnavailable, InvalidInput
from stockade.core.events import SUBJECT_WORKTRACE_ALERT, WorktraceAlert
from stockade.core.logging import get_logger

from ._engine import Alert

__all__ = ["AUDIT_STREAM", "AlertSink", "BusAlertSink", "read_alerts", "to_event"]

#: The stream that stores alerts (the audit trail's).
AUDIT_STREAM = "STOCKADE_AUDIT"

_log = get_logger("stockade.worktrace")


def to_event(alert: Alert) -> WorktraceAlert:
    """The bus event of ``alert``."""
    data = alert.to_dict()
    data["event_time"] = datetime.fromtimestamp(alert.event_time, UTC)
    data["confidence"] = min(1.0, max(0.0, float(alert.confidence)))
    data["name"] = alert.name[:512]  # an anomaly's name embeds the user's binary names
    data["arguments"] = alert.arguments[:8192]
    data["ancestry"] = [b[:4096] for b in alert.ancestry[:64]]
    return WorktraceAlert.model_validate(data)


class AlertSink(Protocol):
    """Where alerts go; ``emit`` must not raise for a delivery failure it can retry: it keeps
    the alert and delivers it later. A sink that keeps some has ``pending`` (what it still
    holds) and a ``retry`` coroutine, which the service calls periodically."""

    async def emit(self, alerts: Sequence[Alert]) -> None: ...


class BusAlertSink:
    """Publishes each alert to ``stockade.worktrace.alert`` with a store acknowledgement.

    An alert the bus refuses stays in ``pending`` (oldest first, at most ``max_pending``: past
    that the oldest is dropped, counted in ``dropped`` and logged) and is published again, in
    order, before any newer one: an outage of the bus delays alerts, it does not lose them."""

    def __init__(self, bus: Bus, *, max_pending: int = 10_000) -> None:
        self.bus = bus
        self.published = 0
        self.failed = 0
        self.dropped = 0
        self.max_pending = max_pending
        self.pending: deque[Alert] = deque()
        self._sending = asyncio.Lock()  # one round at a time: emit and the service's retry

    async def emit(self, alerts: Sequence[Alert]) -> None:
        pending = self.pending
        for alert in alerts:
            if len(pending) >= self.max_pending:
                lost = pending.popleft()
                self.dropped += 1
                _log.error("worktrace.alert_dropped", alert=lost.alert_id, rule=lost.rule_id)
            pending.append(alert)
        await self.retry()

    async def retry(self) -> None:
        """Publish the pending alerts, oldest first; the first refused one stops the round."""
        async with self._sending:
            await self._send()

    async def _send(self) -> None:
        pending = self.pending
        while pending:
            alert = pending[0]
            try:
                event = to_event(alert)
            except InvalidInput as exc:  # never publishable: say so, do not block the rest
                pending.popleft()
                self.dropped += 1
                _log.error("worktrace.alert_invalid", alert=alert.alert_id, error=str(exc))
                continue
            try:
                await self.bus.publish(event)
            except BusUnavailable as exc:
                self.failed += 1
                _log.warning("worktrace.alert_publish_failed", rule=alert.rule_id, error=str(exc))
                return
            pending.popleft()
            self.published += 1


async def read_alerts(bus: Bus, *, since: datetime, limit: int = 10_000) -> list[WorktraceAlert]:
    """Alerts stored since ``since`` (oldest first, at most ``limit``)."""
    last = await bus.last_sequence(AUDIT_STREAM, SUBJECT_WORKTRACE_ALERT)
    if last == 0:
        return []
    out: list[WorktraceAlert] = []
    async for delivery in bus.read_stream(
        AUDIT_STREAM, SUBJECT_WORKTRACE_ALERT, since=since, until_seq=last, idle=1.0
    ):
        try:
            out.append(WorktraceAlert.from_bytes(delivery.data))
        except InvalidInput as exc:
            _log.warning("worktrace.alert_unreadable", seq=delivery.stream_seq, error=str(exc))
            continue
        if len(out) >= limit:
            break
    return out


def alert_rows(alerts: Iterable[WorktraceAlert]) -> list[dict[str, object]]:
    """JSON-ready rows (``--json`` of the CLI)."""
    return [a.model_dump(mode="json") for a in alerts]

"""The decision log: every decision becomes a ``DecisionRecord`` on the bus, off the hot path.

:meth:`DecisionLog.record` only appends to a deque (thread-safe, no lock, no I/O). A background
task (:meth:`DecisionLog.run`) drains it every tick, folds identical decisions — same action,
resource, user, allow, reasons and obligations — seen within ``fold_window`` seconds of the
first into one record with a ``count``, and publishes each record once its window has closed
(and everything on :meth:`DecisionLog.close`). A sink that fails or hangs costs only records:
they are dropped with a warning naming how many decisions they held; decisions never wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from stockade.core.events import DecisionRecord, Event
from stockade.core.logging import get_logger

from ._decision import Decision

__all__ = ["DecisionLog", "DecisionSink"]

_log = get_logger("stockade.authz.decision_log")


class DecisionSink(Protocol):
    """Where decision records go; the bus's ``Bus`` satisfies it."""

    async def publish(self, event: Event) -> object: ...


@dataclass(slots=True)
class _Fold:
    first: float
    last: float
    count: int
    action: str
    resource: dict[str, Any]
    user: str
    decision: Decision


def _key(action: str, resource: Any, user: str, decision: Decision) -> tuple[Any, ...]:
    return (
        action,
        json.dumps(resource, sort_keys=True, default=str),
        user,
        decision.allow,
        decision.reasons,
        json.dumps(decision.obligations.to_dict(), sort_keys=True, default=str),
    )


def _user_name(doc: Mapping[str, Any]) -> str:
    context = doc.get("context")
    user = context.get("user") if isinstance(context, Mapping) else None
    name = user.get("name") if isinstance(user, Mapping) else None
    return name if isinstance(name, str) else ""


class DecisionLog:
    """Folds decisions and publishes them to ``sink`` from a background task."""

    def __init__(
        self,
        sink: DecisionSink,
        *,
        fold_window: float,
        max_pending: int = 100_000,
        publish_timeout: float = 5.0,
    ) -> None:
        self._sink = sink
        self._window = fold_window
        self._tick = min(fold_window / 4, 0.25)
        self._max_pending = max_pending
        self._publish_timeout = publish_timeout
        self._pending: deque[tuple[float, Mapping[str, Any], Decision]] = deque()
        self._open: dict[tuple[Any, ...], _Fold] = {}
        self._overflow = 0
        self._flush_lock = asyncio.Lock()
        self._closed = asyncio.Event()

    def record(self, input_doc: Mapping[str, Any], decision: Decision) -> None:
        """Queue one decision; never blocks. Past ``max_pending`` queued, decisions are counted
        as dropped (and reported by the next flush) instead of queued."""
        if len(self._pending) >= self._max_pending:
            self._overflow += 1
            return
        self._pending.append((time.time(), input_doc, decision))

    def _fold_pending(self) -> list[_Fold]:
        closed: list[_Fold] = []
        pending = self._pending
        while pending:
            at, doc, decision = pending.popleft()
            action = doc.get("action")
            action = action if isinstance(action, str) else ""
            resource = doc.get("resource")
            resource = dict(resource) if isinstance(resource, Mapping) else {}
            user = _user_name(doc)
            key = _key(action, resource, user, decision)
            fold = self._open.get(key)
            if fold is not None and at - fold.first < self._window:
                fold.count += 1
                fold.last = at
                continue
            if fold is not None:
                closed.append(fold)
            self._open[key] = _Fold(at, at, 1, action, resource, user, decision)
        return closed

    def _expired(self, now: float, *, everything: bool) -> list[_Fold]:
        done = [
            key
            for key, fold in self._open.items()
            if everything or now - fold.first >= self._window
        ]
        return [self._open.pop(key) for key in done]

    async def flush(self, *, everything: bool = False) -> None:
        """Fold what is queued and publish the records whose window has closed (or all)."""
        async with self._flush_lock:
            closed = self._fold_pending()
            closed += self._expired(time.time(), everything=everything)
            if self._overflow:
                dropped, self._overflow = self._overflow, 0
                _log.warning("authz.decision_log.overflow", dropped_decisions=dropped)
            for fold in sorted(closed, key=lambda f: f.first):
                await self._publish(fold)

    async def _publish(self, fold: _Fold) -> None:
        record = DecisionRecord(
            action=fold.action,
            resource=fold.resource,
            user=fold.user,
            allow=fold.decision.allow,
            reasons=list(fold.decision.reasons),
            obligations=fold.decision.obligations.to_dict(),
            count=fold.count,
            first_at=datetime.fromtimestamp(fold.first, UTC),
            at=datetime.fromtimestamp(fold.last, UTC),
        )
        try:
            await asyncio.wait_for(self._sink.publish(record), self._publish_timeout)
        except Exception as exc:
            _log.warning(
                "authz.decision_log.dropped",
                dropped_decisions=fold.count,
                action=fold.action,
                error=str(exc) or type(exc).__name__,
            )

    async def run(self) -> None:
        """Flush every tick until :meth:`close`."""
        while not self._closed.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed.wait(), self._tick)
            await self.flush()

    def reopen(self) -> None:
        """Allow :meth:`run` again after :meth:`close` (before the new run task starts)."""
        self._closed.clear()

    async def close(self) -> None:
        """Stop :meth:`run` and publish everything still queued or open."""
        self._closed.set()
        await self.flush(everything=True)

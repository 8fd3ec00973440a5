"""The Worktrace service: source batches -> engine -> alert sinks and the responder.

::

    worktrace = Worktrace(RuleSource(*paths), sinks=[BusAlertSink(bus)],
                          responder=AlertResponder(authorizer, bus), settings=settings.worktrace)
    await worktrace.run(FileFollower(export_path))    # until the source ends or stop()

Matching runs in the event loop (it is pure CPU and never waits); an alert is emitted as soon as
its event is matched, before the rest of the batch. Hot reload polls the rule files every
``reload_interval`` seconds. Alerts and actions the bus refused are sent again every
``retry_interval`` seconds, with no new event needed (and once more when the run ends). A
source with a ``commit`` method (:class:`FileFollower` with a ``state`` file) is told after
each batch whose alerts are all delivered, so a restart neither loses nor repeats them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, Callable, Sequence

from stockade.core.logging import get_logger
from stockade.core.settings import WorktraceSettings
from stockade.core.tasks import cancel_and_wait

from ._alerts import AlertSink
from ._engine import Alert, AnomalyConfig, Engine, LocalSessions
from ._respond import AlertResponder
from ._rules import RuleSource

__all__ = ["Worktrace"]

_log = get_logger("stockade.worktrace")


class Worktrace:
    """Runs the engine over a source; ``on_alert`` (tests, benchmarks) sees each alert with the
    monotonic time it was emitted."""

    def __init__(
        self,
        rules: RuleSource,
        *,
        sinks: Sequence[AlertSink] = (),
        responder: AlertResponder | None = None,
        settings: WorktraceSettings | None = None,
        sessions: LocalSessions | None = None,
        on_alert: Callable[[Alert, float], None] | None = None,
        retry_interval: float = 1.0,
    ) -> None:
        self.settings = settings or WorktraceSettings()
        self.rules = rules
        self.engine = Engine(
            rules,
            sessions=sessions,
            anomaly=AnomalyConfig(
                enabled=self.settings.anomalies,
                learning_events=self.settings.learning_events,
                threshold=self.settings.anomaly_threshold,
                depth=self.settings.ancestry_depth,
            ),
            trusted_namespaces=self.settings.trusted_namespaces,
        )
        self.sinks = list(sinks)
        self.responder = responder if self.settings.respond else None
        self.on_alert = on_alert
        self.retry_interval = retry_interval
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def _reload(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reload_interval)
            try:
                self.rules.reload()
            except Exception:  # the watcher must outlive any surprise
                _log.exception("worktrace.reload_crashed")

    def _undelivered(self) -> bool:
        """Whether an alert or an action of the lines read so far is still to be delivered."""
        pending = any(getattr(sink, "pending", None) for sink in self.sinks)
        return pending or (self.responder is not None and bool(self.responder.pending))

    async def _retry(self) -> None:
        """Deliver what the bus refused earlier."""
        for sink in self.sinks:
            retry = getattr(sink, "retry", None)
            if retry is not None:
                await retry()
        if self.responder is not None and self.responder.pending:
            await self.responder.retry()

    async def _redeliver(self) -> None:
        while True:
            await asyncio.sleep(self.retry_interval)
            try:
                await self._retry()
            except Exception:  # the retrier must outlive any surprise
                _log.exception("worktrace.retry_crashed")

    async def run(self, source: AsyncIterable[list[bytes]]) -> None:
        """Consume ``source`` until it ends or :meth:`stop` is called."""
        reload = asyncio.create_task(self._reload(), name="worktrace-reload")
        redeliver = asyncio.create_task(self._redeliver(), name="worktrace-retry")
        feed = self.engine.feed
        commit = getattr(source, "commit", None)  # a FileFollower with a state file
        try:
            async for batch in source:
                for line in batch:
                    found = feed(line)
                    if found:  # emitted at once, not after the rest of the batch
                        await self._emit(list(found))
                if commit is not None and not self._undelivered():
                    commit()  # a restart goes on after this batch: its alerts are out
                if self._stop.is_set():
                    break
        finally:
            await cancel_and_wait(reload, redeliver, what="worktrace")
        await self._retry()

    async def _emit(self, alerts: list[Alert]) -> None:
        now = time.monotonic()
        if self.on_alert is not None:
            for alert in alerts:
                self.on_alert(alert, now)
        for sink in self.sinks:
            await sink.emit(alerts)
        if self.responder is not None:
            for alert in alerts:
                await self.responder.respond(alert)

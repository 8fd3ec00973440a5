"""Worktrace as a service of the composition root (``stockade up``, ``stockade serve worktrace``).

:func:`start_worktrace` builds what ``stockade worktrace`` and the tests build by hand: the rule
source (hot reload), :class:`~stockade.worktrace.BusAlertSink` (alerts on
``stockade.worktrace.alert``, which the audit service chains into its trail) and
:class:`~stockade.worktrace.AlertResponder` asking authz (``worktrace.respond``) and publishing
``SessionKill`` / ``UserBan`` for the gateway and the shield to apply. The source is the one
``[worktrace]`` names: the export file (followed across rotation, its progress kept in
``state_file``) or a NATS subject of the bus; with none it does not run.

The first start with no state begins at the export's end: alerts for what happened before
Worktrace was switched on would kill today's sessions for yesterday's events. It commits that
position at once, so every later start (a restart after a failed run included, even before its
first batch) goes on from the state file, and the lines written while it was down are read once.

A run that fails (the export unreadable, a state file that is not one, a surprise) is logged and
started again after a bounded backoff: detection must not stop for good on one bad moment, nor
spin on a permanent fault.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stockade.bus import Bus
from stockade.core import ConfigError, get_logger
from stockade.core.settings import WorktraceSettings
from stockade.worktrace import (
    AlertResponder,
    BusAlertSink,
    FileFollower,
    NatsSource,
    RuleSource,
    Worktrace,
)

__all__ = ["WorktraceRunner", "start_worktrace", "state_path"]

log = get_logger("stockade.worktrace")

#: Seconds between restarts of a failed run: doubled from the first to the last.
_BACKOFF = (1.0, 30.0)


def state_path(settings: WorktraceSettings, data_dir: Path) -> Path:
    """``state_file``, or its default inside the data dir (the directory made 0700)."""
    if settings.state_file is not None:
        if not settings.state_file.parent.is_dir():
            raise ConfigError(
                f"worktrace.state_file: directory {settings.state_file.parent} does not exist"
            )
        return settings.state_file
    directory = data_dir / "worktrace"
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    return directory / "follower.json"


@dataclass
class WorktraceRunner:
    """The running service: its engine's counters for ``stockade status``-like reports, and
    :meth:`stop`."""

    settings: WorktraceSettings
    bus: Bus
    authz: Any
    data_dir: Path
    service: Worktrace | None = None
    restarts: int = 0
    _task: asyncio.Task[None] | None = None
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _source: Any = None
    #: A source was opened once: the "begin at the end" of the first start is done, a
    #: restart never skips what was written since (see :meth:`_open_source`).
    _began: bool = False

    def describe(self) -> tuple[str, str]:
        """``(what, where)`` for the start-up banner and the status file."""
        cfg = self.settings
        assert self.service is not None
        rules = len(self.service.rules.current.rules)
        respond = "responses via authz" if cfg.respond else "alerts only"
        return f"Worktrace ({rules} rules, {respond})", str(cfg.source)

    def _build(self) -> Worktrace:
        cfg = self.settings
        responder = (
            AlertResponder(self.authz, self.bus, ban_seconds=cfg.ban_seconds)
            if cfg.respond
            else None
        )
        return Worktrace(
            RuleSource(*cfg.rules),
            sinks=[BusAlertSink(self.bus)],
            responder=responder,
            settings=cfg,
        )

    async def _open_source(self) -> AsyncIterable[list[bytes]]:
        cfg = self.settings
        if cfg.export_file is not None:
            state = state_path(cfg, self.data_dir)
            follower = FileFollower(
                cfg.export_file,
                poll_interval=cfg.poll_interval,
                # the first run starts at the end; later ones resume (a restart before any
                # commit, from the start of an export that was not there at the first)
                from_start=self._began,
                state=state,
            )
            if follower.open():  # from here on no line is missed, even before the first look
                follower.commit()  # where it began: a restart before any batch goes on there
            self._began = True
            return follower
        assert cfg.nats_subject is not None
        source = NatsSource(self.bus, cfg.nats_subject, queue=cfg.nats_queue)
        await source.start()
        return source

    async def _close_source(self) -> None:
        source, self._source = self._source, None
        if isinstance(source, FileFollower):
            source.close()
        elif isinstance(source, NatsSource):
            await source.stop()

    async def start(self) -> None:
        """Load the rules and open the source (an error here fails ``stockade up``: a rule
        file that does not load is a configuration error), then run in the background."""
        self.service = self._build()
        self._source = await self._open_source()
        self._task = asyncio.create_task(self._supervise(), name="worktrace")

    async def _supervise(self) -> None:
        delay = _BACKOFF[0]
        while not self._stopping.is_set():
            assert self.service is not None
            try:
                if self._source is None:
                    self.service = self._build()
                    self._source = await self._open_source()
                await self.service.run(self._source)
                if self._stopping.is_set():
                    return
                log.error("worktrace.source_ended", source=self.settings.source)
            except Exception as exc:  # a failed run is restarted, never the end of detection
                log.error("worktrace.run_failed", source=self.settings.source, error=str(exc))
            await self._close_source()
            self.restarts += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            delay = min(delay * 2, _BACKOFF[1])

    async def stop(self) -> None:
        """Stop reading; the alerts and actions of what was read are sent once more."""
        self._stopping.set()
        if self.service is not None:
            self.service.stop()
        await self._close_source()
        task, self._task = self._task, None
        if task is None:
            return
        try:
            await asyncio.wait_for(task, 10)
        except TimeoutError:
            log.error("worktrace.stop_timeout")
        except Exception as exc:
            log.error("worktrace.stop_failed", error=str(exc))


async def start_worktrace(
    settings: WorktraceSettings, *, bus: Bus, authz: Any, data_dir: Path
) -> WorktraceRunner | None:
    """The started service, or None when ``[worktrace]`` names no source (or is disabled)."""
    if settings.source is None:
        log.info("worktrace_not_started", reason="no worktrace.export_file or nats_subject")
        return None
    runner = WorktraceRunner(settings, bus, authz, data_dir)
    await runner.start()
    return runner

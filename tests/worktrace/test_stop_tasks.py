"""Worktrace's background tasks end with its run, even when that run is cancelled twice."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from stockade.core.settings import WorktraceSettings
from stockade.worktrace import RuleSource, Worktrace


async def _endless() -> AsyncIterator[list[bytes]]:
    await asyncio.Event().wait()
    yield []


async def test_a_run_cancelled_while_it_stops_its_reloader_still_stops_its_retrier() -> None:
    """ATTACK (a stop that is itself cancelled: a second SIGTERM, an outer cancel_and_wait's
    next attempt): the run's clean-up waited for the reloader, the second cancellation ended
    that wait, and the retrier was never cancelled: it ran on after the run, retrying for ever."""
    service = Worktrace(
        RuleSource(), settings=WorktraceSettings(anomalies=False), retry_interval=0.01
    )
    before = asyncio.all_tasks()
    run = asyncio.create_task(service.run(_endless()))
    await asyncio.sleep(0.05)
    background = {t for t in asyncio.all_tasks() - before if t is not run}
    assert {t.get_name() for t in background} == {"worktrace-reload", "worktrace-retry"}
    run.cancel()
    await asyncio.sleep(0)  # the run's clean-up now waits for the reloader to end
    run.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await run
    await asyncio.sleep(0.05)
    try:
        assert all(t.done() for t in background), [t.get_name() for t in background if not t.done()]
    finally:
        for t in background:
            t.cancel()

"""Stopping background tasks for sure.

Python 3.11's :func:`asyncio.wait_for` loses a cancellation that arrives in the same turn of the
loop as the result it waits for: it returns the result and the task runs on (CPython gh-86296,
fixed in 3.12). nats-py waits for every request's reply that way, so ``task.cancel(); await task``
on a task that talks to NATS in a loop could wait forever: ``stockade up`` hung on SIGTERM one
time in a few. :func:`cancel_and_wait` cancels again until the task has ended, a bounded number
of times, and never waits without bound.
"""

from __future__ import annotations

import asyncio
from typing import Any

from .logging import get_logger

__all__ = ["cancel_and_wait"]

_log = get_logger(__name__)

#: How long one cancellation is given to end the task before the next is sent.
_GRACE = 0.5
#: Cancellations sent before giving up on a task that will not end.
_ATTEMPTS = 20


async def cancel_and_wait(*tasks: asyncio.Future[Any] | None, what: str = "task") -> None:
    """Cancel ``tasks`` (None is skipped) and wait until they have ended, cancelling again each
    one whose cancellation was lost, at most :data:`_ATTEMPTS` times (then log and return).
    All are cancelled before any is waited for, so a cancellation of the caller during the
    wait leaves none of them uncancelled; that cancellation still propagates. The first
    task's own exception, if one failed, is raised here once all have ended, as ``await
    task`` would; their cancellations are not."""
    pending = {task for task in tasks if task is not None}
    for _ in range(_ATTEMPTS):
        pending = {task for task in pending if not task.done()}
        if not pending:
            break
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=_GRACE)
    else:
        if any(not task.done() for task in pending):
            _log.error("task_would_not_stop", task=what, attempts=_ATTEMPTS)
            return
    for ended in tasks:
        if ended is not None and not ended.cancelled() and (error := ended.exception()) is not None:
            raise error

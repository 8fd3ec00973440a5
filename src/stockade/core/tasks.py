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


async def cancel_and_wait(task: asyncio.Future[Any] | None, *, what: str = "task") -> None:
    """Cancel ``task`` and wait until it has ended, cancelling it again each time a
    cancellation was lost, at most :data:`_ATTEMPTS` times (then log and return). The task's
    own exception, if it failed, is raised here, as ``await task`` would; its cancellation is
    not. A cancellation of the caller itself still propagates."""
    if task is None:
        return
    for _ in range(_ATTEMPTS):
        if task.done():
            break
        task.cancel()
        await asyncio.wait({task}, timeout=_GRACE)
    else:
        if not task.done():
            _log.error("task_would_not_stop", task=what, attempts=_ATTEMPTS)
            return
    if not task.cancelled() and (error := task.exception()) is not None:
        raise error

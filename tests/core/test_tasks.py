"""cancel_and_wait ends a task whose cancellation Python 3.11's wait_for swallows."""

from __future__ import annotations

import asyncio
import contextlib
import sys

import pytest

from stockade.core.tasks import cancel_and_wait


async def _swallowing_loop(ready: asyncio.Event, replies: list[asyncio.Future[int]]) -> None:
    """Like a watcher that asks NATS in a loop: each round waits for a reply with wait_for."""
    loop = asyncio.get_running_loop()
    while True:
        reply: asyncio.Future[int] = loop.create_future()
        replies.append(reply)
        ready.set()
        await asyncio.wait_for(reply, 5)
        await asyncio.sleep(0.01)


async def _cancel_as_the_reply_arrives(stop: object) -> asyncio.Task[None]:
    ready = asyncio.Event()
    replies: list[asyncio.Future[int]] = []
    task = asyncio.create_task(_swallowing_loop(ready, replies))
    await ready.wait()
    await asyncio.sleep(0)  # the task now waits inside wait_for
    replies[-1].set_result(1)  # the reply lands ...
    stopping = asyncio.ensure_future(stop(task))  # type: ignore[operator]
    await asyncio.sleep(0)  # ... in the very turn the stop cancels the task
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(stopping), 3)
    stopped = stopping.done()
    if not task.done():  # leave nothing running
        task.cancel()
        replies[-1].cancel()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(task, 1)
    stopping.cancel()
    return task if stopped else None  # type: ignore[return-value]


async def _naive(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_the_naive_cancel_is_lost_in_this_race() -> None:
    """The race is real on this Python: one cancel and an await never return."""
    if sys.version_info >= (3, 12):
        pytest.xfail("wait_for keeps a cancellation from Python 3.12 on")
    assert await _cancel_as_the_reply_arrives(_naive) is None


async def test_cancel_and_wait_ends_the_task_all_the_same() -> None:
    task = await _cancel_as_the_reply_arrives(cancel_and_wait)
    assert task is not None
    assert task.cancelled()


async def test_a_failed_task_raises_its_error_and_none_is_fine() -> None:
    async def fail() -> None:
        raise ValueError("boom")

    task = asyncio.create_task(fail())
    await asyncio.sleep(0)
    with pytest.raises(ValueError, match="boom"):
        await cancel_and_wait(task)
    await cancel_and_wait(None)

"""Watching a live session: its write-through cast, tailed and sent as Server-Sent Events.

The messages are those of asciinema-player's ``eventsource`` driver: first a reset (``cols``,
``rows``, ``time`` and the output so far as ``init``), then one ``[time, "o", text]`` per output
event as the recorder appends it, and a ``done`` event once the session has ended and the file
stopped growing. Input events (``"i"``) are never sent to the page. The viewer's right to watch
(``allowed``) is checked again every second, output flowing or not: a viewer signed out,
disabled or stripped of their role sees the stream end at once, without the ``done`` event.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

__all__ = ["POLL_SECONDS", "tail_cast"]

#: How often the file is checked for new events.
POLL_SECONDS = 0.02
_LIVENESS_SECONDS = 1.0
_MAX_INIT = 1 << 20
_MAX_SECONDS = 12 * 3600.0


def _sse(data: str, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return (head + "".join(f"data: {line}\n" for line in data.split("\n")) + "\n").encode()


def _output(line: bytes) -> tuple[float, str] | None:
    try:
        event = json.loads(line)
    except ValueError:
        return None
    if (
        isinstance(event, list)
        and len(event) == 3
        and event[1] == "o"
        and isinstance(event[0], int | float)
        and isinstance(event[2], str)
    ):
        return float(event[0]), event[2]
    return None


async def tail_cast(
    path: Path,
    is_live: Callable[[], Awaitable[bool]],
    *,
    poll: float = POLL_SECONDS,
    allowed: Callable[[], Awaitable[bool]] | None = None,
) -> AsyncIterator[bytes]:
    """SSE bytes for the cast at ``path`` while ``is_live()`` says the session goes on and
    ``allowed()`` (when given) says the viewer may still watch it."""
    with path.open("rb") as handle:
        header_line = handle.readline()
        try:
            header = json.loads(header_line)
            cols, rows = int(header.get("width", 80)), int(header.get("height", 24))
        except (ValueError, AttributeError, TypeError):
            yield _sse(json.dumps({"state": "offline"}))
            return
        buffered = b""
        init: list[str] = []
        last = 0.0
        size = 0
        for raw in handle.read().split(b"\n"):
            if not raw:
                continue
            found = _output(raw)
            if found is None:
                if not raw.endswith(b"]"):
                    buffered = raw  # a line the recorder is still writing
                continue
            last, text = found
            init.append(text)
            size += len(text)
            while size > _MAX_INIT and len(init) > 1:
                size -= len(init.pop(0))
        yield _sse(json.dumps({"cols": cols, "rows": rows, "time": last, "init": "".join(init)}))
        started = time.monotonic()
        checked = vetted = started
        while time.monotonic() - started < _MAX_SECONDS:
            if allowed is not None and time.monotonic() - vetted >= _LIVENESS_SECONDS:
                vetted = time.monotonic()  # checked while output flows too, not only when idle
                if not await allowed():
                    return
            chunk = handle.read()
            if chunk:
                lines = (buffered + chunk).split(b"\n")
                buffered = lines.pop()
                for raw in lines:
                    found = _output(raw)
                    if found is not None:
                        yield _sse(json.dumps([found[0], "o", found[1]]))
                continue
            now = time.monotonic()
            if now - checked >= _LIVENESS_SECONDS:
                checked = now
                if not await is_live():
                    if not handle.read(1):
                        break
                    handle.seek(-1, 1)
                    continue
            await asyncio.sleep(poll)
    yield _sse("{}", event="done")

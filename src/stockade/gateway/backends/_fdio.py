"""Non-blocking reads and writes on raw file descriptors (pipes and PTY masters).

asyncio's subprocess streams break under bulk output when shared with asyncssh's copy helpers
(``process.redirect``), so sessions copy bytes themselves through these small wrappers.
"""

from __future__ import annotations

import asyncio
import errno
import os

__all__ = ["CHUNK", "FdReader", "FdWriter"]

#: Bytes per read: large enough for bulk throughput, small enough for SSH packets.
CHUNK = 64 * 1024


async def _wait(fd: int, *, write: bool) -> None:
    loop = asyncio.get_running_loop()
    ready = loop.create_future()

    def _done() -> None:
        if not ready.done():
            ready.set_result(None)

    if write:
        loop.add_writer(fd, _done)
    else:
        loop.add_reader(fd, _done)
    try:
        await ready
    finally:
        if write:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)


class FdReader:
    """Reads a descriptor it owns; ``read()`` returns ``b""`` at end of file (or EIO on a PTY)."""

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self.fd = fd
        self._closed = False

    async def read(self, size: int = CHUNK) -> bytes:
        while not self._closed:
            try:
                return os.read(self.fd, size)
            except BlockingIOError:
                await _wait(self.fd, write=False)
            except OSError as exc:
                if exc.errno == errno.EIO:  # PTY master after the last slave closed
                    return b""
                raise
        return b""

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            os.close(self.fd)


class FdWriter:
    """Writes everything given to a descriptor it owns, waiting while the pipe is full."""

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self.fd = fd
        self._closed = False

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view and not self._closed:
            try:
                written = os.write(self.fd, view)
            except BlockingIOError:
                await _wait(self.fd, write=True)
                continue
            except (BrokenPipeError, ConnectionResetError):
                return
            view = view[written:]

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            os.close(self.fd)

"""Non-blocking reads and writes on raw file descriptors (pipes and PTY masters).

asyncio's subprocess streams break under bulk output when shared with asyncssh's copy helpers
(``process.redirect``), so sessions copy bytes themselves through these small wrappers. Closing
a wrapper wakes a pending read or write, which then ends (``b""`` for a read).
"""

from __future__ import annotations

import asyncio
import errno
import os

__all__ = ["CHUNK", "FdReader", "FdWriter"]

#: Bytes per read: bulk output moves in few, large reads (the local backend grows its stdout pipe
#: to hold several); asyncssh splits each into packets of the peer's maximum size.
CHUNK = 256 * 1024


class _Fd:
    def __init__(self, fd: int, *, write: bool) -> None:
        os.set_blocking(fd, False)
        self.fd = fd
        self._write = write
        self._closed = False
        self._waiter: asyncio.Future[None] | None = None

    async def _ready(self) -> None:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiter = waiter

        def _done() -> None:
            if not waiter.done():
                waiter.set_result(None)

        if self._write:
            loop.add_writer(self.fd, _done)
        else:
            loop.add_reader(self.fd, _done)
        try:
            await waiter
        finally:
            self._waiter = None
            if not self._closed:
                self._unwatch(loop)

    def _unwatch(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._write:
            loop.remove_writer(self.fd)
        else:
            loop.remove_reader(self.fd)

    def close(self) -> None:
        """Close the descriptor (idempotent); a pending read or write returns."""
        if self._closed:
            return
        self._closed = True
        waiter = self._waiter
        if waiter is not None:
            self._unwatch(asyncio.get_running_loop())
            if not waiter.done():
                waiter.set_result(None)
        os.close(self.fd)


class FdReader(_Fd):
    """Reads a descriptor it owns; ``read()`` returns ``b""`` at end of file (or EIO on a PTY)."""

    def __init__(self, fd: int) -> None:
        super().__init__(fd, write=False)

    async def read(self, size: int = CHUNK) -> bytes:
        while not self._closed:
            try:
                return os.read(self.fd, size)
            except BlockingIOError:
                await self._ready()
            except OSError as exc:
                if exc.errno == errno.EIO:  # PTY master after the last slave closed
                    return b""
                raise
        return b""


class FdWriter(_Fd):
    """Writes everything given to a descriptor it owns, waiting while the pipe is full."""

    def __init__(self, fd: int) -> None:
        super().__init__(fd, write=True)

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view and not self._closed:
            try:
                written = os.write(self.fd, view)
            except BlockingIOError:
                await self._ready()
                continue
            except (BrokenPipeError, ConnectionResetError):
                return
            view = view[written:]

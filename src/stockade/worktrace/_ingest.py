"""Sources of Tetragon export lines: a followed file, stdin, NATS.

Every source is an async iterator of *batches* (lists of complete lines, without the newline):
a batch is whatever arrived together, so a burst costs one wake-up, not one per event.

:class:`FileFollower` follows ``tetragon.log`` the way Tetragon's exporter writes it: the
exporter (lumberjack) renames the full file away (``tetragon-<time>.log``) and creates a new
one. When the path names another file than the one open, the follower first reads the old
file to its end, then any rotated file it never had open (it fell more than one rotation
behind: they are found beside the export by name and read whole, oldest first), then opens
the new one from its start: no line is lost and none is read twice. Rotated files present
when the follower starts are history and are not read. A file truncated in place
(copytruncate) is read again from its start.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import IO

from stockade.bus import Bus
from stockade.core.errors import BusUnavailable, InvalidInput

__all__ = ["FileFollower", "NatsSource", "iter_lines", "stdin_batches"]

_CHUNK = 1 << 20
#: A line longer than this without a newline is dropped (counted in ``oversized``).
MAX_PENDING = 1 << 20


class FileFollower:
    """Follow ``path`` across rotation; ``from_start=False`` skips what is there already.

    ``poll_interval`` is how long an idle follower sleeps between looks (seconds). Stop with
    :meth:`close` (the iterator ends after its current batch).
    """

    def __init__(
        self, path: Path, *, poll_interval: float = 0.005, from_start: bool = True
    ) -> None:
        self.path = path
        self.poll_interval = poll_interval
        self.from_start = from_start
        self.rotations = 0
        self.truncations = 0
        self.oversized = 0
        self.missed_rotations = 0
        self._fd: int | None = None
        #: Files read to their end (inodes, oldest first); backups present at start count as read.
        self._seen: dict[tuple[int, int], None] = {inode: None for _, inode, _ in self._backups()}
        self._ino: tuple[int, int] | None = None
        self._pos = 0
        self._pending = b""
        self._closed = False

    def close(self) -> None:
        self._closed = True

    def _open(self, *, at_end: bool) -> bool:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise InvalidInput(str(self.path), f"cannot open: {exc.strerror}") from None
        st = os.fstat(fd)
        self._fd = fd
        self._ino = (st.st_dev, st.st_ino)
        self._pos = st.st_size if at_end else 0
        if at_end:
            os.lseek(fd, self._pos, os.SEEK_SET)
        return True

    def _read_all(self) -> list[bytes]:
        """Every complete line from the open file's current position to its end."""
        assert self._fd is not None
        out: list[bytes] = []
        while True:
            chunk = os.read(self._fd, _CHUNK)
            if not chunk:
                return out
            self._pos += len(chunk)
            data = self._pending + chunk if self._pending else chunk
            lines = data.split(b"\n")
            self._pending = lines.pop()
            if len(self._pending) > MAX_PENDING:
                self._pending = b""
                self.oversized += 1
            out.extend(line for line in lines if line)

    def _backups(self) -> list[tuple[int, tuple[int, int], Path]]:
        """Rotated files beside the export (``tetragon-<time>.log``): (mtime, inode, path)."""
        stem, suffix = self.path.stem, self.path.suffix
        found = []
        try:
            names = os.listdir(self.path.parent)
        except OSError:
            return []
        for name in names:
            if not (name.startswith(stem + "-") and name.endswith(suffix)):
                continue
            path = self.path.parent / name
            try:
                st = os.stat(path)
            except OSError:
                continue
            found.append((st.st_mtime_ns, (st.st_dev, st.st_ino), path))
        return sorted(found)

    def _drain_file(self, path: Path) -> list[bytes]:
        """Every line of a whole rotated file we never had open (we fell behind a rotation)."""
        try:
            data = path.read_bytes()
        except OSError:
            return []
        lines = data.split(b"\n")
        return [line for line in lines if line]

    def _check_rotation(self) -> list[bytes]:
        """Lines left in a rotated-away file (and in any rotated file we missed while we were
        behind), after switching to the new one."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return []  # between the rename and the new file: look again later
        if (st.st_dev, st.st_ino) != self._ino:
            tail = self._read_all()
            if self._pending:  # a last line without its newline
                tail.append(self._pending)
                self._pending = b""
            assert self._fd is not None
            os.close(self._fd)
            self._fd = None
            self.rotations += 1
            if self._ino is not None:
                self._seen[self._ino] = None
            # Open the new file before looking for missed ones: should it rotate away now, we
            # still hold it, and it is not taken for a missed file.
            opened = self._open(at_end=False)
            current = self._ino if opened else None
            for _, inode, path in self._backups():  # oldest first
                if inode in self._seen or inode == current:
                    continue
                tail.extend(self._drain_file(path))  # rotated away before we opened it
                self._seen[inode] = None
                self.missed_rotations += 1
            while len(self._seen) > 256:
                del self._seen[next(iter(self._seen))]
            return tail
        if st.st_size < self._pos:
            assert self._fd is not None
            os.lseek(self._fd, 0, os.SEEK_SET)
            self._pos = 0
            self._pending = b""
            self.truncations += 1
        return []

    def poll(self) -> list[bytes]:
        """One look: the complete lines available now (no waiting)."""
        if self._fd is None and not self._open(at_end=not self.from_start):
            return []
        self.from_start = True  # a file that appears later is read from its start
        lines = self._read_all()
        if lines:
            return lines
        return self._check_rotation() + (self._read_all() if self._fd is not None else [])

    async def __aiter__(self) -> AsyncIterator[list[bytes]]:
        try:
            while not self._closed:
                lines = self.poll()
                if lines:
                    yield lines
                else:
                    await asyncio.sleep(self.poll_interval)
        finally:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def iter_lines(stream: IO[bytes]) -> Iterator[bytes]:
    """The non-empty lines of a binary stream (a file or ``sys.stdin.buffer``)."""
    for line in stream:
        line = line.rstrip(b"\r\n")
        if line:
            yield line


async def stdin_batches(stream: IO[bytes] | None = None) -> AsyncIterator[list[bytes]]:
    """Batches of lines from stdin (or ``stream``), read without blocking the event loop."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=MAX_PENDING)
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), stream or sys.stdin.buffer
    )
    while True:
        try:
            line = await reader.readline()
        except ValueError:  # longer than the limit
            continue
        if not line:
            return
        batch = [line.rstrip(b"\r\n")]
        while True:  # whatever else is buffered already
            try:
                more = await asyncio.wait_for(reader.readline(), 0)
            except (TimeoutError, ValueError):
                break
            if not more:
                break
            batch.append(more.rstrip(b"\r\n"))
        yield [b for b in batch if b]


class NatsSource:
    """Tetragon events published to a NATS subject, one event per message (core NATS: a log
    shipper such as Vector or Fluent Bit forwards the export). ``queue`` lets several Worktrace
    replicas share the subject."""

    def __init__(self, bus: Bus, subject: str, *, queue: str = "", max_pending: int = 65536):
        self.bus = bus
        self.subject = subject
        self.queue_group = queue
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue(max_pending)
        self.received = 0
        self.dropped = 0
        self._sub: object | None = None

    async def start(self) -> None:
        async def _on(msg: object) -> None:
            data: bytes = msg.data  # type: ignore[attr-defined]
            self.received += 1
            try:
                self._queue.put_nowait(data)
            except asyncio.QueueFull:
                self.dropped += 1

        try:
            self._sub = await self.bus.nc.subscribe(self.subject, queue=self.queue_group, cb=_on)
            await self.bus.nc.flush()  # the server knows the subscription before we return
        except Exception as exc:  # nats-py errors, mapped at the boundary
            raise BusUnavailable(f"NATS subscribe {self.subject}: {exc}") from exc

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):  # already closed with the connection
                await self._sub.unsubscribe()  # type: ignore[attr-defined]
            self._sub = None
        self._queue.put_nowait(None)

    async def __aiter__(self) -> AsyncIterator[list[bytes]]:
        while True:
            first = await self._queue.get()
            if first is None:
                return
            batch = [first]
            while not self._queue.empty():
                item = self._queue.get_nowait()
                if item is None:
                    yield batch
                    return
                batch.append(item)
            yield batch

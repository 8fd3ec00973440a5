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
(copytruncate) is read again from its start: besides its size shrinking below the offset, the
follower keeps a fingerprint of what it read (the file's first bytes and the bytes just before
the offset) and checks it before each read, so a truncation followed by a longer rewrite
between two looks is seen too.

Only regular files are read: the export and the rotated files are opened with ``O_NOFOLLOW``
(a symlink put in their place is refused, not followed into another file) and checked with
``fstat`` (a FIFO or a device is refused), each refusal logged once.

With ``state``, the follower survives a restart of its consumer: :meth:`FileFollower.commit`
(the consumer calls it once every line handed out so far is dealt with, its alerts delivered)
writes the file and offset reached, with their fingerprint, to ``state`` (0600, replaced
atomically). A new follower on the same ``state`` goes on from there: in the export, or in the
rotated file it was reading (then every rotated file after it, then the export), so the lines
written while no consumer ran are read, once. A commit that no longer matches any file (its
file was deleted, or rewritten) is logged and every rotated file present is read: lines may be
read twice then, none is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import stat
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import IO

from stockade.bus import Bus
from stockade.core.errors import BusUnavailable, InvalidInput
from stockade.core.logging import get_logger

__all__ = ["FileFollower", "NatsSource", "iter_lines", "stdin_batches"]

_log = get_logger("stockade.worktrace")

_CHUNK = 1 << 20
#: Bytes of the file's start and of the bytes before the offset kept as its fingerprint.
FINGERPRINT_BYTES = 128
_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
#: A line longer than this without a newline is dropped (counted in ``oversized``).
MAX_PENDING = 1 << 20


class FileFollower:
    """Follow ``path`` across rotation; ``from_start=False`` skips what is there already.

    ``poll_interval`` is how long an idle follower sleeps between looks (seconds). Stop with
    :meth:`close` (the iterator ends after its current batch).
    """

    def __init__(
        self,
        path: Path,
        *,
        poll_interval: float = 0.005,
        from_start: bool = True,
        state: Path | None = None,
    ) -> None:
        self.path = path
        self.poll_interval = poll_interval
        self.from_start = from_start
        self.state = state
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
        #: What was read: the file's first bytes and the bytes just before ``_pos``.
        self._head = b""
        self._tail = b""
        self.refused = 0
        self._refusal = ""  # the last refusal logged, so a refused path is logged once
        self._committed: tuple[tuple[int, int], int] | None = None
        self._catch_up = False  # read the rotated files not seen before the export
        if state is not None:
            self._resume(state)

    def close(self) -> None:
        self._closed = True

    def open(self) -> bool:
        """Open the export now rather than at the first look (at its end unless ``from_start``
        or a commit says otherwise): a service that says it follows the file reads every line
        written after it said so. False when there is no export yet (it is read from its
        start once it appears)."""
        if self._fd is None and not self._open(at_end=not self.from_start):
            return False
        self.from_start = True
        return True

    def _refuse(self, path: Path, reason: str) -> None:
        self.refused += 1
        if reason != self._refusal:
            self._refusal = reason
            _log.error("worktrace.export_refused", path=str(path), reason=reason)

    def _open_regular(self, path: Path) -> tuple[int, os.stat_result] | None:
        """``path`` opened read-only if it is a regular file itself (not through a symlink);
        None (and one log line) when it is something else, None when it is missing."""
        try:
            fd = os.open(path, _OPEN_FLAGS)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                self._refuse(path, "a symlink, not the export file (refused, not followed)")
                return None
            raise InvalidInput(str(path), f"cannot open: {exc.strerror}") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            kind = "a FIFO" if stat.S_ISFIFO(st.st_mode) else "not a regular file"
            self._refuse(path, f"{kind} (mode {stat.filemode(st.st_mode)}), refused")
            return None
        return fd, st

    def _open(self, *, at_end: bool) -> bool:
        opened = self._open_regular(self.path)
        if opened is None:
            return False
        fd, st = opened
        self._refusal = ""
        self._fd = fd
        self._ino = (st.st_dev, st.st_ino)
        self._pos = st.st_size if at_end else 0
        self._head = self._tail = b""
        if at_end:
            os.lseek(fd, self._pos, os.SEEK_SET)
            self._head = os.pread(fd, min(FINGERPRINT_BYTES, self._pos), 0)
            start = max(0, self._pos - FINGERPRINT_BYTES)
            self._tail = os.pread(fd, self._pos - start, start)
        return True

    def commit(self) -> None:
        """Record in ``state`` that every complete line handed out so far was dealt with."""
        if self.state is None or self._fd is None or self._ino is None:
            return
        pos = self._pos - len(self._pending)
        if self._committed == (self._ino, pos):
            return
        head = os.pread(self._fd, min(FINGERPRINT_BYTES, pos), 0)
        start = max(0, pos - FINGERPRINT_BYTES)
        tail = os.pread(self._fd, pos - start, start)
        doc = {"dev": self._ino[0], "ino": self._ino[1], "pos": pos, "head": head.hex()}
        doc["tail"] = tail.hex()
        tmp = self.state.with_name(self.state.name + ".tmp")
        try:
            with contextlib.suppress(FileNotFoundError):  # a crash's leftover, or a planted link
                os.unlink(tmp)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w") as handle:
                json.dump(doc, handle)
                handle.flush()
                os.fsync(handle.fileno())  # a crash leaves the old state or the new, never half
            os.replace(tmp, self.state)
        except OSError as exc:
            raise InvalidInput(str(self.state), f"cannot write: {exc.strerror}") from None
        self._committed = (self._ino, pos)

    def _resume(self, state: Path) -> None:
        """Go on from the commit in ``state`` (see the module's docstring)."""
        try:
            doc = json.loads(state.read_bytes())
            inode = (int(doc["dev"]), int(doc["ino"]))
            pos = int(doc["pos"])
            head, tail = bytes.fromhex(doc["head"]), bytes.fromhex(doc["tail"])
        except FileNotFoundError:
            return  # the first run: as without a state
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InvalidInput(str(state), f"not a follower state: {exc}") from None
        for path in [self.path] + [p for _, _, p in self._backups()]:
            opened = self._open_regular(path)
            if opened is None:
                continue
            fd, st = opened
            if (st.st_dev, st.st_ino) != inode:
                os.close(fd)
                continue
            start = max(0, pos - len(tail))
            if (
                st.st_size < pos
                or os.pread(fd, len(head), 0) != head
                or os.pread(fd, pos - start, start) != tail
            ):
                os.close(fd)
                break  # rewritten since: read what is there, as if the commit were lost
            os.lseek(fd, pos, os.SEEK_SET)
            self._fd, self._ino, self._pos = fd, inode, pos
            self._head, self._tail, self._committed = head, tail, (inode, pos)
            if path != self.path:  # the rotated files after this one were never read
                older: dict[tuple[int, int], None] = {}
                for _, other, _ in self._backups():
                    older[other] = None
                    if other == inode:
                        break
                self._seen = older
            return
        _log.error("worktrace.resume_lost", state=str(state), path=str(self.path))
        self._seen = {}  # every rotated file present, then the export from its start
        self.from_start = self._catch_up = True

    def _unchanged(self) -> bool:
        """Whether the open file still holds what was read up to the offset (not truncated
        and rewritten in place since the last look)."""
        assert self._fd is not None
        if self._pos == 0:
            return True
        head = self._head
        if head and os.pread(self._fd, len(head), 0) != head:
            return False
        tail = self._tail
        if self._pos > len(head) and tail:
            return os.pread(self._fd, len(tail), self._pos - len(tail)) == tail
        return True

    def _restart(self) -> None:
        """Read the open file again from its start (it was truncated in place)."""
        assert self._fd is not None
        os.lseek(self._fd, 0, os.SEEK_SET)
        self._pos = 0
        self._pending = b""
        self._head = self._tail = b""
        self.truncations += 1

    def _read_all(self) -> list[bytes]:
        """Every complete line from the open file's current position to its end."""
        assert self._fd is not None
        out: list[bytes] = []
        while True:
            chunk = os.read(self._fd, _CHUNK)
            if not chunk:
                return out
            if self._pos < FINGERPRINT_BYTES:
                self._head += chunk[: FINGERPRINT_BYTES - self._pos]
            if len(chunk) >= FINGERPRINT_BYTES:
                self._tail = chunk[-FINGERPRINT_BYTES:]
            else:
                self._tail = (self._tail + chunk)[-FINGERPRINT_BYTES:]
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
                st = os.lstat(path)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode):  # a symlink or a FIFO planted beside the export
                self._refuse(
                    path, f"rotated file is not a regular file ({stat.filemode(st.st_mode)})"
                )
                continue
            found.append((st.st_mtime_ns, (st.st_dev, st.st_ino), path))
        return sorted(found)

    def _drain_file(self, path: Path) -> list[bytes]:
        """Every line of a whole rotated file we never had open (we fell behind a rotation)."""
        try:
            opened = self._open_regular(path)
        except InvalidInput:
            return []
        if opened is None:
            return []
        fd, _ = opened
        parts = []
        try:
            while chunk := os.read(fd, _CHUNK):
                parts.append(chunk)
        except OSError:
            return []
        finally:
            os.close(fd)
        lines = b"".join(parts).split(b"\n")
        return [line for line in lines if line]

    def _drain_missed(self, current: tuple[int, int] | None) -> list[bytes]:
        """Every line of the rotated files never read (oldest first), but ``current``."""
        lines: list[bytes] = []
        for _, inode, path in self._backups():  # oldest first
            if inode in self._seen or inode == current:
                continue
            lines.extend(self._drain_file(path))  # rotated away before we opened it
            self._seen[inode] = None
            self.missed_rotations += 1
        while len(self._seen) > 256:
            del self._seen[next(iter(self._seen))]
        return lines

    def _check_rotation(self) -> list[bytes]:
        """Lines left in a rotated-away file (and in any rotated file we missed while we were
        behind), after switching to the new one."""
        try:
            st = os.lstat(self.path)  # a symlink in its place is another file: reopen, refuse
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
            tail.extend(self._drain_missed(self._ino if opened else None))
            return tail
        if st.st_size < self._pos:
            self._restart()
        return []

    def poll(self) -> list[bytes]:
        """One look: the complete lines available now (no waiting)."""
        if self._fd is None and not self._open(at_end=not self.from_start):
            return []
        self.from_start = True  # a file that appears later is read from its start
        if self._catch_up:  # the commit was lost: the rotated files first, then the export
            self._catch_up = False
            return self._drain_missed(self._ino) + self._read_all()
        if not self._unchanged():  # truncated and rewritten past the offset since the last look
            self._restart()
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
    replicas share the subject. Core NATS cannot hold a publisher back: past ``max_pending``
    queued events the newest are dropped, counted in ``dropped`` and logged (an error once per
    run of drops), never silently."""

    def __init__(self, bus: Bus, subject: str, *, queue: str = "", max_pending: int = 65536):
        self.bus = bus
        self.subject = subject
        self.queue_group = queue
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue(max_pending)
        self.received = 0
        self.dropped = 0
        self._overflowing = False
        self._sub: object | None = None

    async def start(self) -> None:
        async def _on(msg: object) -> None:
            data: bytes = msg.data  # type: ignore[attr-defined]
            self.received += 1
            try:
                self._queue.put_nowait(data)
            except asyncio.QueueFull:
                self.dropped += 1
                if not self._overflowing:  # once per run of drops: events are being lost
                    self._overflowing = True
                    _log.error(
                        "worktrace.source_overflow",
                        subject=self.subject,
                        dropped=self.dropped,
                        max_pending=self._queue.maxsize,
                    )
            else:
                self._overflowing = False

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
        if self._queue.full():  # the end must fit (put_nowait raised): the oldest event goes
            self._queue.get_nowait()
            self.dropped += 1
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

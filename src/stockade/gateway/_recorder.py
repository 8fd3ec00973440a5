"""Session recordings in asciinema's asciicast v2 format (one JSON header line, then events).

Spec: https://docs.asciinema.org/manual/asciicast/v2/. Events are ``[seconds, "o"|"i"|"r", data]``:
terminal output, input (only when the policy says ``record_input``) and resizes (``"80x24"``).
Bytes are decoded incrementally as UTF-8 (invalid sequences replaced), so a multi-byte character
split across two reads is recorded whole. A recording stops growing at ``max_bytes`` and says so
in a last output event; the file is created 0600.

Recordings survive a crash of the gateway: the file and its header exist (fsynced) as soon as
the recorder is constructed; events are written through in whole lines, at the latest
``flush_interval`` (100 ms) after they happened and at once on a resize and on close, so a
``kill -9`` loses at most the last 100 ms (the kernel keeps what was written); the file is
fsynced at most once per ``fsync_interval`` (1 s) while events arrive, and on close. A reader
(:func:`iter_cast`) plays a cut-off file up to its last whole line.

Finished recordings may be compressed (``compress="gzip"``: ``<id>.cast.gz``); :func:`iter_cast`,
:func:`play_cast` and :func:`export_cast` read both forms, and :func:`resolve_cast` finds the
compressed file from the path stored at session start. :func:`sweep_recordings` removes
recordings older than the retention (``gateway.recording_keep``) and :class:`RecordingSweeper`
runs it daily, publishing a :class:`~stockade.core.events.RecordingsSwept` audit event.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import gzip
import json
import os
import re
import shutil
import time
import zlib
from collections.abc import Awaitable, Callable, Iterator, Mapping
from datetime import timedelta
from pathlib import Path
from typing import IO, Any, Literal, Protocol

from stockade.core.errors import InvalidInput
from stockade.core.events import Event, RecordingsSwept
from stockade.core.logging import get_logger

from ._termfilter import TerminalFilter

__all__ = [
    "CastRecorder",
    "RecordingSweeper",
    "compress_cast",
    "export_cast",
    "iter_cast",
    "play_cast",
    "resolve_cast",
    "sweep_recordings",
]

_log = get_logger("stockade.gateway.recorder")
_TRUNCATED = (
    "\r\n[stockade: recording size limit reached; the rest of this session is not recorded]\r\n"
)
#: Buffered bytes that are written at once, whatever the time.
_FLUSH_BYTES = 64 * 1024
_SUFFIXES = (".cast", ".cast.gz")
#: JSON escapes of the characters terminal output is full of, applied with str.replace (C speed).
_ESCAPES = (
    ("\\", "\\\\"),
    ('"', '\\"'),
    ("\n", "\\n"),
    ("\r", "\\r"),
    ("\t", "\\t"),
    ("\x1b", "\\u001b"),
    ("\x08", "\\b"),
    ("\x07", "\\u0007"),
)
#: Any other character JSON needs escaped; rare in terminal output.
_OTHER_CONTROL = re.compile("[\x00-\x06\x0b\x0c\x0e-\x1a\x1c-\x1f]")


def _json_string(text: str) -> str:
    """``json.dumps(text, ensure_ascii=False)``, several times faster on terminal output."""
    escaped = text
    for char, replacement in _ESCAPES:
        if char in escaped:
            escaped = escaped.replace(char, replacement)
    if not escaped.isprintable() and _OTHER_CONTROL.search(escaped):
        return json.dumps(text, ensure_ascii=False)  # a rare control character: the slow way
    return f'"{escaped}"'


class CastRecorder:
    """Writes one asciicast v2 file; not thread-safe, used from the session's event loop.

    ``loop`` (default: the running loop, if any) schedules the 100 ms flush of buffered events;
    without a loop every event is written at once. ``compress`` applies on :meth:`close`
    (``path`` then names the compressed file). ``clock`` stamps events; ``timer`` paces
    flushes and fsyncs (both exist for tests).
    """

    def __init__(
        self,
        path: Path,
        *,
        width: int,
        height: int,
        env: Mapping[str, str],
        title: str,
        record_input: bool,
        max_bytes: int,
        clock: Callable[[], float] = time.monotonic,
        flush_interval: float = 0.1,
        fsync_interval: float = 1.0,
        compress: Literal["none", "gzip"] = "none",
        loop: asyncio.AbstractEventLoop | None = None,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.record_input = record_input
        self.max_bytes = max_bytes
        self.compress = compress
        self._clock = clock
        self._timer = timer
        self._start = clock()
        self._flush_interval = flush_interval
        self._fsync_interval = fsync_interval
        if loop is None:
            with contextlib.suppress(RuntimeError):
                loop = asyncio.get_running_loop()
        self._loop = loop
        self._scheduled: asyncio.TimerHandle | None = None
        self._out = codecs.getincrementaldecoder("utf-8")("replace")
        self._in = codecs.getincrementaldecoder("utf-8")("replace")
        self._written = 0
        self._truncated = False
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._dirty = False
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self._last_flush = timer()
        self._last_sync = self._last_flush
        header = {
            "version": 2,
            "width": max(1, width),
            "height": max(1, height),
            "timestamp": int(time.time()),
            "env": {k: v for k, v in env.items() if k in ("TERM", "SHELL")},
            "title": title,
        }
        self._write_line(json.dumps(header, ensure_ascii=False))
        self.flush(sync=True)

    @property
    def bytes_written(self) -> int:
        """Size of the recording so far."""
        return self._written

    @property
    def closed(self) -> bool:
        return self._fd is None

    def _write_line(self, line: str) -> None:
        if self._fd is None:
            return
        data = (line + "\n").encode()
        self._buffer.append(data)
        self._buffered += len(data)
        self._written += len(data)

    def _event(self, kind: str, data: str, *, now: bool = False) -> None:
        if self._fd is None or self._truncated or not data:
            return
        line = f'[{round(self._clock() - self._start, 6)!r}, "{kind}", {_json_string(data)}]'
        if self._written + len(line) > self.max_bytes:
            self._truncated = True
            line = json.dumps([round(self._clock() - self._start, 6), "o", _TRUNCATED])
            now = True
        self._write_line(line)
        self._flush_soon(now)

    def _flush_soon(self, now: bool) -> None:
        if now or self._loop is None or self._buffered >= _FLUSH_BYTES:
            self.flush()
            return
        elapsed = self._timer() - self._last_flush
        if elapsed >= self._flush_interval:
            self.flush()
        elif self._scheduled is None:
            self._scheduled = self._loop.call_later(self._flush_interval - elapsed, self.flush)

    def flush(self, *, sync: bool = False) -> None:
        """Write buffered events to the file; fsync when ``sync`` or a second has passed."""
        if self._scheduled is not None:
            self._scheduled.cancel()
            self._scheduled = None
        if self._fd is None:
            return
        if self._buffer:
            data = b"".join(self._buffer)
            self._buffer.clear()
            self._buffered = 0
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            self._dirty = True
        now = self._timer()
        self._last_flush = now
        if self._dirty and (sync or now - self._last_sync >= self._fsync_interval):
            os.fdatasync(self._fd)
            self._dirty = False
            self._last_sync = now

    def output(self, data: bytes) -> None:
        """Record terminal output."""
        self._event("o", self._out.decode(data))

    def input(self, data: bytes) -> None:
        """Record typed input, when this recording includes input."""
        if self.record_input:
            self._event("i", self._in.decode(data))

    def resize(self, width: int, height: int) -> None:
        """Record a terminal resize (written at once)."""
        self._event("r", f"{width}x{height}", now=True)

    def close(self) -> None:
        """Flush what is still decoding, fsync and close the file, then compress it when asked
        (idempotent). Compressing a large recording takes a while: call it in a thread
        (``await asyncio.to_thread(recorder.close)``) or use :meth:`aclose`."""
        if self._fd is None:
            return
        self._event("o", self._out.decode(b"", final=True), now=True)
        if self.record_input:
            self._event("i", self._in.decode(b"", final=True), now=True)
        self.flush(sync=True)
        fd, self._fd = self._fd, None
        os.close(fd)
        if self.compress == "gzip":
            self.path = compress_cast(self.path)

    async def aclose(self) -> None:
        """:meth:`close`, with the compression in a thread."""
        compress, self.compress = self.compress, "none"
        self.close()
        if compress == "gzip" and self.path.suffix == ".cast":
            self.path = await asyncio.to_thread(compress_cast, self.path)


def compress_cast(path: Path) -> Path:
    """Replace ``path`` (a finished ``.cast``) by ``path.gz``, atomically; returns the new path."""
    target = path.with_name(path.name + ".gz")
    tmp = path.with_name(f".{path.name}.gz.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as raw:
            with path.open("rb") as source, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
                shutil.copyfileobj(source, gz, 1 << 20)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    path.unlink()
    return target


def resolve_cast(path: Path) -> Path:
    """The recording stored as ``path`` or, once compressed, as ``path.gz``."""
    if not path.exists() and path.suffix == ".cast":
        compressed = path.with_name(path.name + ".gz")
        if compressed.exists():
            return compressed
    return path


def _open(path: Path) -> IO[str]:
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    if path.name.endswith(".zst"):
        raise InvalidInput(str(path), "zstd recordings are not supported; Stockade writes gzip")
    return path.open(encoding="utf-8", newline="")


def _lines(handle: IO[str]) -> Iterator[str]:
    """Lines of ``handle``; a compressed stream cut short (crash) ends where it was cut."""
    try:
        yield from handle
    except (EOFError, zlib.error, gzip.BadGzipFile):
        return


def iter_cast(path: Path) -> Iterator[dict[str, Any] | list[Any]]:
    """Yield the header (a dict), then each event (``[time, kind, data]``) of a cast file
    (``.cast`` or ``.cast.gz``; the compressed one is found from the ``.cast`` path too).

    A last line cut short (the recorder was killed while writing it) is ignored. Raises
    :class:`InvalidInput` naming the line when the file is not asciicast v2.
    """
    path = resolve_cast(path)
    field = str(path)
    try:
        handle = _open(path)
    except OSError as exc:
        raise InvalidInput(field, f"cannot read recording: {exc.strerror}") from exc
    with handle:
        number = 0
        lines = _lines(handle)
        while True:
            try:
                line = next(lines)
            except StopIteration:
                return
            except UnicodeDecodeError as exc:
                raise InvalidInput(field, "not UTF-8 text") from exc  # decoded ahead: no line
            number += 1
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                if not line.endswith("\n") and number > 1:
                    return  # torn last line
                raise InvalidInput(f"{field}:{number}", f"not JSON: {exc.msg}") from exc
            except RecursionError:
                raise InvalidInput(f"{field}:{number}", "nested too deeply") from None
            if number == 1:
                if not isinstance(item, dict) or item.get("version") != 2:
                    raise InvalidInput(f"{field}:1", "not an asciicast v2 header")
            elif not _is_event(item, line):
                if not line.endswith("\n"):
                    return
                raise InvalidInput(f"{field}:{number}", "not an asciicast v2 event")
            yield item


#: A JSON escape of a UTF-16 surrogate: legal JSON, but a lone one is no text to write.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _is_event(item: object, line: str) -> bool:
    """``[time, code, data]``: a number (no bool), a string, a string of UTF-8 text."""
    if not (isinstance(item, list) and len(item) == 3):
        return False
    at, code, data = item
    if isinstance(at, bool) or not isinstance(at, int | float) or not isinstance(code, str):
        return False
    if not isinstance(data, str):
        return False
    if _SURROGATE_ESCAPE.search(line):
        try:
            data.encode("utf-8")
        except UnicodeEncodeError:
            return False
    return True


def export_cast(path: Path, output: Path) -> int:
    """Write the recording at ``path`` (either form) to ``output`` as a plain asciicast v2 file,
    up to its last whole event; returns the number of events."""
    count = -1
    lines = []
    for item in iter_cast(path):
        lines.append(json.dumps(item, ensure_ascii=False) + "\n")
        count += 1
    output.write_text("".join(lines), encoding="utf-8")
    return max(count, 0)


def play_cast(
    path: Path,
    write: Callable[[str], None],
    *,
    speed: float = 1.0,
    max_idle: float = 2.0,
    sleep: Callable[[float], None] = time.sleep,
    raw: bool = False,
    terminal_filter: TerminalFilter | None = None,
) -> int:
    """Replay a recording's output through ``write`` in (scaled) real time; returns event count.

    Pauses longer than ``max_idle`` seconds (before scaling) are shortened to it. The output
    passes through ``terminal_filter`` (a fresh :class:`TerminalFilter` when None): control
    sequences that reach beyond the screen (clipboard, titles, reports) are removed, since the
    recorded user chose them. ``raw`` writes the output exactly as recorded.
    """
    if speed <= 0:
        raise InvalidInput("speed", "must be positive")
    screen = None if raw else (terminal_filter or TerminalFilter())
    previous = 0.0
    played = 0
    for item in iter_cast(path):
        if isinstance(item, dict):
            continue
        at, kind, data = float(item[0]), item[1], item[2]
        pause = min(max(at - previous, 0.0), max_idle)
        previous = at
        if kind != "o":
            continue
        if screen is not None:
            data = screen.feed(data)
        if pause > 0:
            sleep(pause / speed)
        if data:
            write(data)
        played += 1
    return played


def sweep_recordings(
    directory: Path, keep: timedelta, *, now: float | None = None
) -> RecordingsSwept:
    """Remove recordings (``*.cast``, ``*.cast.gz``) in ``directory`` last written more than
    ``keep`` ago; returns what was removed, as the audit event to publish."""
    if keep.total_seconds() <= 0:
        raise InvalidInput("gateway.recording_keep", "must be positive")
    cutoff = (time.time() if now is None else now) - keep.total_seconds()
    removed: list[str] = []
    total = 0
    if directory.is_dir():
        for entry in sorted(directory.iterdir()):
            if not entry.name.endswith(_SUFFIXES) or entry.is_symlink() or not entry.is_file():
                continue
            stat = entry.stat()
            if stat.st_mtime >= cutoff:
                continue
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
                removed.append(entry.name)
                total += stat.st_size
    return RecordingsSwept(
        directory=str(directory),
        keep_seconds=int(keep.total_seconds()),
        removed=removed[:1000],
        removed_count=len(removed),
        removed_bytes=total,
    )


class _Publisher(Protocol):
    def publish(self, event: Event) -> Awaitable[object]: ...


class RecordingSweeper:
    """Runs :func:`sweep_recordings` at start and then every ``interval`` seconds (a day),
    publishing each sweep's :class:`RecordingsSwept` event (the sweep is itself audited)."""

    def __init__(
        self,
        directory: Path,
        keep: timedelta,
        *,
        publisher: _Publisher | None,
        interval: float = 86400.0,
    ) -> None:
        self.directory = directory
        self.keep = keep
        self._publisher = publisher
        self._interval = interval
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self.sweeps = 0

    async def sweep(self) -> RecordingsSwept:
        """One sweep now, published."""
        event = await asyncio.to_thread(sweep_recordings, self.directory, self.keep)
        self.sweeps += 1
        _log.info(
            "recordings_swept",
            directory=str(self.directory),
            removed=event.removed_count,
            bytes=event.removed_bytes,
        )
        if self._publisher is not None:
            try:
                await self._publisher.publish(event)
            except Exception as exc:  # logged above; the next sweep publishes again
                _log.warning("recordings_sweep_unpublished", error=str(exc) or type(exc).__name__)
        return event

    async def start(self) -> None:
        self._stop.clear()
        self._task = asyncio.create_task(self._run(), name="recording-sweeper")

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                await self.sweep()
            except OSError as exc:
                _log.warning("recordings_sweep_failed", error=str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self._interval)

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

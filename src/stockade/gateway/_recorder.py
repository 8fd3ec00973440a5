"""Session recordings in asciinema's asciicast v2 format (one JSON header line, then events).

Spec: https://docs.asciinema.org/manual/asciicast/v2/. Events are ``[seconds, "o"|"i"|"r", data]``:
terminal output, input (only when the policy says ``record_input``) and resizes (``"80x24"``).
Bytes are decoded incrementally as UTF-8 (invalid sequences replaced), so a multi-byte character
split across two reads is recorded whole. A recording stops growing at ``max_bytes`` and says so
in a last output event; the file is created 0600.
"""

from __future__ import annotations

import codecs
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from stockade.core.errors import InvalidInput

__all__ = ["CastRecorder", "iter_cast", "play_cast"]

_TRUNCATED = (
    "\r\n[stockade: recording size limit reached; the rest of this session is not recorded]\r\n"
)


class CastRecorder:
    """Writes one asciicast v2 file; not thread-safe, used from the session's event loop."""

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
    ) -> None:
        self.path = path
        self.record_input = record_input
        self.max_bytes = max_bytes
        self._clock = clock
        self._start = clock()
        self._out = codecs.getincrementaldecoder("utf-8")("replace")
        self._in = codecs.getincrementaldecoder("utf-8")("replace")
        self._written = 0
        self._truncated = False
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self._file: IO[str] | None = os.fdopen(fd, "w", encoding="utf-8")
        header = {
            "version": 2,
            "width": max(1, width),
            "height": max(1, height),
            "timestamp": int(time.time()),
            "env": {k: v for k, v in env.items() if k in ("TERM", "SHELL")},
            "title": title,
        }
        self._write_line(json.dumps(header, ensure_ascii=False))

    @property
    def bytes_written(self) -> int:
        """Size of the recording so far."""
        return self._written

    def _write_line(self, line: str) -> None:
        if self._file is None:
            return
        self._file.write(line + "\n")
        self._written += len(line) + 1

    def _event(self, kind: str, data: str) -> None:
        if self._file is None or self._truncated or not data:
            return
        line = json.dumps([round(self._clock() - self._start, 6), kind, data], ensure_ascii=False)
        if self._written + len(line) > self.max_bytes:
            self._truncated = True
            line = json.dumps([round(self._clock() - self._start, 6), "o", _TRUNCATED])
        self._write_line(line)

    def output(self, data: bytes) -> None:
        """Record terminal output."""
        self._event("o", self._out.decode(data))

    def input(self, data: bytes) -> None:
        """Record typed input, when this recording includes input."""
        if self.record_input:
            self._event("i", self._in.decode(data))

    def resize(self, width: int, height: int) -> None:
        """Record a terminal resize."""
        self._event("r", f"{width}x{height}")

    def close(self) -> None:
        """Flush what is still decoding and close the file (idempotent)."""
        if self._file is None:
            return
        self._event("o", self._out.decode(b"", final=True))
        if self.record_input:
            self._event("i", self._in.decode(b"", final=True))
        self._file.close()
        self._file = None


def iter_cast(path: Path) -> Iterator[dict[str, Any] | list[Any]]:
    """Yield the header (a dict), then each event (``[time, kind, data]``) of a cast file.

    Raises :class:`InvalidInput` naming the line when the file is not asciicast v2.
    """
    field = str(path)
    try:
        handle = path.open(encoding="utf-8")
    except OSError as exc:
        raise InvalidInput(field, f"cannot read recording: {exc.strerror}") from exc
    with handle:
        for number, line in enumerate(handle, start=1):
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InvalidInput(f"{field}:{number}", f"not JSON: {exc.msg}") from exc
            if number == 1:
                if not isinstance(item, dict) or item.get("version") != 2:
                    raise InvalidInput(f"{field}:1", "not an asciicast v2 header")
            elif not (isinstance(item, list) and len(item) == 3 and isinstance(item[2], str)):
                raise InvalidInput(f"{field}:{number}", "not an asciicast v2 event")
            yield item


def play_cast(
    path: Path,
    write: Callable[[str], None],
    *,
    speed: float = 1.0,
    max_idle: float = 2.0,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Replay a recording's output through ``write`` in (scaled) real time; returns event count.

    Pauses longer than ``max_idle`` seconds (before scaling) are shortened to it.
    """
    if speed <= 0:
        raise InvalidInput("speed", "must be positive")
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
        if pause > 0:
            sleep(pause / speed)
        write(data)
        played += 1
    return played

"""Watching legacy scp transfers (``scp -O``): one record per file, hashed as it passes.

``scp -t PATH`` (upload: the client sends) and ``scp -f PATH`` (download: the server sends) speak
the rcp protocol over the session's stdin/stdout: control lines ``C<mode> <size> <name>``,
``D<mode> 0 <name>`` / ``E`` (directories), ``T...`` (times), each followed by the file's bytes and
a status byte. :class:`ScpObserver` is fed both directions incrementally and never keeps a file in
memory: it hashes the data stream of the sending side.
"""

from __future__ import annotations

import hashlib
import re
import shlex
from dataclasses import dataclass, field

__all__ = ["ScpObserver", "ScpRequest", "TransferRecord", "scp_command"]

_FLAGS = frozenset("vrpdtfq")
_CONTROL = re.compile(rb"C([0-7]{4}) (\d{1,19}) ([^/\n]{1,255})\Z")
_DIRECTORY = re.compile(rb"D([0-7]{4}) 0 ([^/\n]{1,255})\Z")
MAX_LINE = 4096


@dataclass(frozen=True, slots=True)
class ScpRequest:
    """An ``scp -t`` (upload) or ``scp -f`` (download) command."""

    direction: str
    target: str
    recursive: bool


def scp_command(command: str) -> ScpRequest | None:
    """The scp request ``command`` makes, or None when it is not a plain remote scp."""
    try:
        words = shlex.split(command)
    except ValueError:
        return None
    if not words or words[0] not in ("scp", "/usr/bin/scp"):
        return None
    flags: set[str] = set()
    paths: list[str] = []
    for word in words[1:]:
        if word == "--":
            continue
        if word.startswith("-") and not paths:
            letters = set(word[1:])
            if not letters or not letters <= _FLAGS:
                return None
            flags |= letters
        else:
            paths.append(word)
    if ("t" in flags) == ("f" in flags) or len(paths) != 1:
        return None
    return ScpRequest("upload" if "t" in flags else "download", paths[0], "r" in flags)


@dataclass(frozen=True, slots=True)
class TransferRecord:
    """One file that passed (or began to)."""

    direction: str
    path: str
    size: int
    sha256: str
    complete: bool


@dataclass
class _Stream:
    """The sending side's byte stream: control lines, then file data."""

    direction: str
    base: str
    dirs: list[str] = field(default_factory=list)
    line: bytearray = field(default_factory=bytearray)
    remaining: int = 0
    name: str = ""
    size: int = 0
    digest: object = None
    done: list[TransferRecord] = field(default_factory=list)
    status_pending: bool = False

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self.remaining:
                take = min(self.remaining, len(view))
                self.digest.update(view[:take])  # type: ignore[attr-defined]
                self.remaining -= take
                view = view[take:]
                if not self.remaining:
                    self._finish(True)
                    self.status_pending = True
                continue
            if self.status_pending:  # the sender's \0 after the data
                self.status_pending = False
                view = view[1:]
                continue
            newline = bytes(view).find(b"\n")
            if newline < 0:
                self.line += view
                if len(self.line) > MAX_LINE:
                    raise ValueError("scp control line too long")
                return
            self.line += view[:newline]
            view = view[newline + 1 :]
            self._control(bytes(self.line))
            self.line.clear()

    def _control(self, line: bytes) -> None:
        if not line or line[:1] == b"T":
            return
        if line[:1] in (b"\x01", b"\x02"):
            return  # a warning or error from the sender
        if line == b"E":
            if self.dirs:
                self.dirs.pop()
            return
        directory = _DIRECTORY.match(line)
        if directory:
            self.dirs.append(_name(directory.group(2)))
            return
        control = _CONTROL.match(line)
        if control is None:
            raise ValueError(f"unexpected scp control line {line[:64]!r}")
        self.size = int(control.group(2))
        self.name = _name(control.group(3))
        self.digest = hashlib.sha256()
        self.remaining = self.size
        if not self.size:
            self._finish(True)
            self.status_pending = True

    def _finish(self, complete: bool) -> None:
        path = "/".join([self.base.rstrip("/") or "/", *self.dirs, self.name])
        self.done.append(
            TransferRecord(self.direction, path, self.size,
                           self.digest.hexdigest(), complete)  # type: ignore[attr-defined]
        )  # fmt: skip
        self.name, self.digest = "", None


def _name(raw: bytes) -> str:
    name = raw.decode("utf-8", "replace")
    if name in (".", "..") or "/" in name:
        raise ValueError(f"scp file name {name!r} is not allowed")
    return name


class ScpObserver:
    """Feed it what passes; ask for the files completed so far."""

    def __init__(self, request: ScpRequest) -> None:
        self._request = request
        self._stream = _Stream(request.direction, request.target)
        self._reported = 0

    def client_bytes(self, data: bytes) -> None:
        """Bytes from the client to the workload (the data stream of an upload)."""
        if self._request.direction == "upload":
            self._stream.feed(data)

    def server_bytes(self, data: bytes) -> None:
        """Bytes from the workload to the client (the data stream of a download)."""
        if self._request.direction == "download":
            self._stream.feed(data)

    def completed(self) -> list[TransferRecord]:
        """Files finished since the last call."""
        done = self._stream.done[self._reported :]
        self._reported = len(self._stream.done)
        return done

    def finish(self) -> list[TransferRecord]:
        """Everything not yet reported, a file cut off midway included (incomplete)."""
        stream = self._stream
        if stream.digest is not None:
            stream._finish(False)
        return self.completed()

"""The legacy scp protocol (rcp's, spoken by ``scp -O``), observed for audit.

A session whose exec command is ``scp -t PATH`` receives an upload: the client is the *source*
(it sends control lines and file data), the server-side ``scp -t`` is the *sink* (it answers every
step with an ack). ``scp -f PATH...`` is the reverse: a download, the server sends and the client
acks. :func:`scp_command` recognises those commands; :class:`ScpObserver` is fed the bytes of both
directions as they pass and yields one :class:`ScpFile` per file, with the SHA-256 of exactly its
bytes, hashed as they stream (a file is never held in memory).

The protocol is lockstep, so the observer follows it whatever the chunking or the interleaving of
the two directions: bytes a side sends before its turn wait (at most ``max_pending`` of them).

Source lines, each acked by the sink (ack: ``\\0`` ok, ``\\1msg\\n`` error, ``\\2msg\\n`` fatal)::

    T<mtime> <usec> <atime> <usec>\\n   times of the next C or D (with -p)
    C<mode:4 octal> <size> <name>\\n     a file; after an ok ack: <size> bytes, then \\0
                                       (\\1msg\\n if the source could not read it), final ack
    D<mode:4 octal> 0 <name>\\n          enter a directory (-r only)
    E\\n                                leave it
    \\1msg\\n / \\2msg\\n                   an error of the source, not acked (\\2: it gives up)

Names are single path components: empty, ``.``, ``..``, or a name with ``/`` or NUL is a
:class:`ScpProtocolError`, as is anything else out of protocol; the caller then ends the channel.
"""

from __future__ import annotations

import enum
import hashlib
import shlex
from dataclasses import dataclass
from typing import Literal, Protocol

from stockade.core.errors import InvalidInput, StockadeError

__all__ = ["ScpFile", "ScpObserver", "ScpProtocolError", "ScpRequest", "scp_command"]

Direction = Literal["upload", "download"]

MAX_LINE = 4096
"""Longest control line or message accepted (OpenSSH's own buffer is 2048 bytes)."""
MAX_DEPTH = 128
"""Deepest directory nesting accepted in a recursive transfer."""
MAX_SIZE = (1 << 63) - 1
_FLAGS = frozenset("vrpdtf")


class ScpProtocolError(StockadeError):
    """The byte stream is not the scp protocol (the message says where it went wrong)."""


# -- the command line ----------------------------------------------------------------------


@dataclass(frozen=True)
class ScpRequest:
    """A parsed ``scp -t``/``scp -f`` command (what the OpenSSH client runs on the server)."""

    direction: Direction
    """``upload`` for ``-t`` (the server receives), ``download`` for ``-f`` (the server sends)."""
    paths: tuple[str, ...]
    """The target directory or file (``-t``: exactly one) or the sources (``-f``), with the shell's
    quoting removed. A leading ``~`` or ``~/`` is kept: :meth:`argv` expands it."""
    recursive: bool = False
    """``-r``: directories (``D``/``E`` lines) are allowed."""
    preserve: bool = False
    """``-p``: times (``T`` lines) precede files and directories."""
    target_is_directory: bool = False
    """``-d``: the upload's target must be a directory. The OpenSSH client also passes it to
    ``scp -f`` when it downloads several files; there it has no effect."""
    verbose: bool = False
    """``-v``: the server-side scp writes debug lines to stderr."""

    def argv(self, *, home: str) -> list[str]:
        """The command to execute without a shell, ``~`` expanded to ``home``."""
        flags = [
            flag
            for flag, on in (
                ("-v", self.verbose),
                ("-r", self.recursive),
                ("-p", self.preserve),
                ("-d", self.target_is_directory),
            )
            if on
        ]
        mode = "-t" if self.direction == "upload" else "-f"
        paths = [_expand_tilde(path, home) for path in self.paths]
        return ["scp", *flags, mode, "--", *paths]

    def shell_command(self) -> str:
        """The command line for a POSIX shell that runs the *system's* scp: ``command -p`` looks
        it up in the standard PATH, never the workspace's (whose ``~/.stockade/bin`` comes first
        and is the user's to write), and skips shell functions; paths are quoted, a leading
        ``~`` or ``~/`` is left for the shell to expand."""
        flags = [
            flag
            for flag, on in (
                ("-v", self.verbose),
                ("-r", self.recursive),
                ("-p", self.preserve),
                ("-d", self.target_is_directory),
            )
            if on
        ]
        mode = "-t" if self.direction == "upload" else "-f"
        paths = [_quote_path(path) for path in self.paths]
        return " ".join(["command", "-p", "scp", *flags, mode, "--", *paths])


def _quote_path(path: str) -> str:
    if path == "~":
        return "~"
    if path.startswith("~/"):
        rest = path[2:]
        return "~/" + shlex.quote(rest) if rest else "~/"
    return shlex.quote(path)


def _expand_tilde(path: str, home: str) -> str:
    if path == "~":
        return home
    if path.startswith("~/"):
        return home.rstrip("/") + path[1:]
    return path


_UNQUOTED_REFUSED = frozenset("|&;<>()$`*?[]{}#!\"'\\")  # quotes handled before this check
_SPACE = " \t"


def _shell_words(command: str) -> list[str]:
    """Splits ``command`` as a POSIX shell would, refusing anything the shell would expand.

    Quoting (single, double, backslash) is honoured; unquoted ``$ ` * ? [ { ; | & < > ( ) # !``,
    ``$``/backquote inside double quotes, a newline or a NUL anywhere are refused: the command is
    then executed without a shell, so it must mean the same without one. A word starting with an
    unquoted ``~`` keeps it (``~`` or ``~/...`` only); a quoted one there is refused, so that a
    path starting with ``~`` always means the home directory.
    """
    if "\n" in command or "\r" in command or "\0" in command:
        raise InvalidInput("scp command", "newlines and NUL bytes are not allowed")
    words: list[str] = []
    word: list[str] = []
    in_word = tilde = False

    def finish() -> None:
        text = "".join(word)
        if text.startswith("~") and not tilde:
            raise InvalidInput("scp command", "a quoted or escaped ~ at the start of a path")
        words.append(text)

    i = 0
    n = len(command)
    while i < n:
        ch = command[i]
        if ch in _SPACE:
            if in_word:
                finish()
                word, in_word, tilde = [], False, False
            i += 1
            continue
        if ch == "~" and not in_word:
            rest = command[i + 1 : i + 2]
            if rest not in ("", "/", " ", "\t"):
                raise InvalidInput("scp command", "only ~ and ~/ are expanded (no ~user)")
            word.append("~")
            in_word = tilde = True
            i += 1
            continue
        in_word = True
        if ch == "'":
            end = command.find("'", i + 1)
            if end < 0:
                raise InvalidInput("scp command", "unterminated single quote")
            word.append(command[i + 1 : end])
            i = end + 1
        elif ch == '"':
            i += 1
            while True:
                if i >= n:
                    raise InvalidInput("scp command", "unterminated double quote")
                ch = command[i]
                if ch == '"':
                    i += 1
                    break
                if ch in "$`":
                    raise InvalidInput("scp command", f"{ch!r} would be expanded by the shell")
                if ch == "\\" and i + 1 < n and command[i + 1] in '$`"\\':
                    word.append(command[i + 1])
                    i += 2
                    continue
                word.append(ch)
                i += 1
        elif ch == "\\":
            if i + 1 >= n:
                raise InvalidInput("scp command", "a trailing backslash")
            word.append(command[i + 1])
            i += 2
        elif ch in _UNQUOTED_REFUSED:
            raise InvalidInput("scp command", f"unquoted {ch!r} would be interpreted by the shell")
        else:
            word.append(ch)
            i += 1
    if in_word:
        finish()
    return words


def scp_command(command: str) -> ScpRequest | None:
    """Recognises ``scp [-v] [-r] [-p] [-d] (-t|-f) [--] PATH...`` (flags may be combined).

    Returns ``None`` when the command does not run scp at all (its first word, quotes removed,
    is not ``scp`` or ``.../scp``). Raises :class:`~stockade.core.errors.InvalidInput` for a
    command that runs scp in any other way (unknown flags, both or neither of ``-t``/``-f``,
    ``-t`` with several paths, shell syntax): such a transfer could not be audited and must be
    refused.
    """
    stripped = command.strip(_SPACE)
    first = stripped.split(None, 1)[0] if stripped else ""
    program = first.translate({ord(c): None for c in "'\"\\"})
    if program != "scp" and not program.endswith("/scp"):
        return None
    words = _shell_words(command)
    if not words or words[0] != "scp":
        raise InvalidInput("scp command", "run it as plain 'scp' (no path, no quoting)")
    flags: set[str] = set()
    index = 1
    while index < len(words):
        word = words[index]
        if word == "--":
            index += 1
            break
        if not word.startswith("-") or word == "-":
            break
        unknown = sorted(set(word[1:]) - _FLAGS)
        if unknown:
            raise InvalidInput("scp command", f"unsupported flag -{unknown[0]} in {word!r}")
        flags.update(word[1:])
        index += 1
    paths = tuple(words[index:])
    if ("t" in flags) == ("f" in flags):
        raise InvalidInput("scp command", "exactly one of -t (upload) and -f (download) is needed")
    if not paths or any(path == "" for path in paths):
        raise InvalidInput("scp command", "a non-empty path is needed")
    direction: Direction = "upload" if "t" in flags else "download"
    if direction == "upload" and len(paths) != 1:
        raise InvalidInput("scp command", "an upload (-t) takes exactly one target")
    return ScpRequest(
        direction=direction,
        paths=paths,
        recursive="r" in flags,
        preserve="p" in flags,
        target_is_directory="d" in flags,
        verbose="v" in flags,
    )


# -- the byte streams ----------------------------------------------------------------------


@dataclass(frozen=True)
class ScpFile:
    """One file the transfer carried (or tried to)."""

    direction: Direction
    """``upload`` (client to server) or ``download``."""
    path: str
    """Directory names of ``D`` lines and the file's name, joined by ``/``, as the source sent
    them (relative to the command's path). Control characters, non-UTF-8 bytes and ``\\`` are
    escaped as ``\\xNN`` / ``\\\\``, so the string is safe to log."""
    mode: int
    """Permission bits from the ``C`` line."""
    size: int
    """Size announced by the ``C`` line."""
    transferred: int
    """Bytes of it that went over the channel."""
    sha256: str
    """Hex SHA-256 of exactly the ``transferred`` bytes."""
    completed: bool
    """All ``size`` bytes arrived and both sides acknowledged them."""
    error: str | None = None
    """The escaped error message of the source or the sink, when either reported one."""


class _Side(enum.Enum):
    SOURCE = "source"
    SINK = "sink"


class _State(enum.Enum):
    START = "waiting for the sink to be ready"
    CONTROL = "waiting for a control line"
    ACK = "waiting for an acknowledgement"
    DATA = "reading file data"
    STATUS = "waiting for the end-of-file status"
    ENDED = "ended"


class _AckFor(enum.Enum):
    TIMES = "T"
    FILE = "C"
    DIRECTORY = "D"
    END = "E"
    DATA = "file data"


class _Digest(Protocol):
    def update(self, data: memoryview, /) -> None: ...

    def hexdigest(self) -> str: ...


@dataclass
class _Current:
    path: str
    mode: int
    size: int
    remaining: int
    digest: _Digest
    error: str | None = None


_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def _escape(raw: bytes) -> str:
    text = raw.decode("utf-8", errors="surrogateescape")
    out = []
    for ch in text:
        code = ord(ch)
        if ch == "\\":
            out.append("\\\\")
        elif 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code < 0x20 or code == 0x7F or 0x80 <= code < 0xA0:
            out.append(f"\\x{code:02x}")
        else:
            out.append(ch)
    return "".join(out)


def _name(raw: bytes) -> str:
    if raw in (b"", b".", b"..") or b"/" in raw or b"\0" in raw:
        raise ScpProtocolError(f"unexpected file name {_escape(raw)!r}")
    return _escape(raw)


def _digits(raw: bytes, what: str) -> int:
    if not raw or not raw.isdigit() or len(raw) > 19:
        raise ScpProtocolError(f"bad {what} {_escape(raw[:32])!r}")
    value = int(raw)
    if value > MAX_SIZE:
        raise ScpProtocolError(f"{what} out of range")
    return value


class ScpObserver:
    """Follows one scp transfer (see the module docstring).

    Feed every chunk with :meth:`from_client` / :meth:`from_server` as it passes (before or after
    forwarding it, either works); each returns the files finished by that chunk. Call
    :meth:`close` when the channel ends: a file cut off midway is returned with
    ``completed=False``. Any method may raise :class:`ScpProtocolError`; after that the observer
    is ended and the caller should close the channel.
    """

    def __init__(self, request: ScpRequest, *, max_pending: int = 1 << 20) -> None:
        self.request = request
        self.max_pending = max_pending
        self._source_is_client = request.direction == "upload"
        self._buffers = {_Side.SOURCE: bytearray(), _Side.SINK: bytearray()}
        self._state = _State.START
        self._ack_for: _AckFor | None = None
        self._pending_name: tuple[str, int] | None = None  # D line awaiting its ack
        self._dirs: list[str] = []
        self._current: _Current | None = None
        self._files: list[ScpFile] = []

    @property
    def files(self) -> tuple[ScpFile, ...]:
        """Every file reported so far."""
        return tuple(self._files)

    @property
    def ended(self) -> bool:
        """A fatal error or a protocol error ended the transfer."""
        return self._state is _State.ENDED

    @property
    def pending_bytes(self) -> int:
        """Bytes held back, waiting for their turn (file data is hashed, never held)."""
        return sum(len(buf) for buf in self._buffers.values())

    def from_client(self, data: bytes) -> list[ScpFile]:
        """Bytes the SSH client sent on the channel."""
        return self._feed(_Side.SOURCE if self._source_is_client else _Side.SINK, data)

    def from_server(self, data: bytes) -> list[ScpFile]:
        """Bytes the server-side ``scp`` wrote to the channel (its stdout)."""
        return self._feed(_Side.SINK if self._source_is_client else _Side.SOURCE, data)

    def close(self) -> list[ScpFile]:
        """The channel ended; reports a file that was in flight as incomplete."""
        out: list[ScpFile] = []
        if self._current is not None:
            out.append(self._finish(completed=False, error=self._current.error or "interrupted"))
        self._state = _State.ENDED
        return out

    # -- the state machine --------------------------------------------------------------

    def _feed(self, side: _Side, data: bytes) -> list[ScpFile]:
        if not data:
            return []
        if self._state is _State.ENDED:
            if side is _Side.SOURCE:
                raise ScpProtocolError("the source sent data after the transfer ended")
            return []  # a sink's last words after the end carry no file data
        self._buffers[side] += data
        out: list[ScpFile] = []
        try:
            while self._step(out):
                pass
        except ScpProtocolError:
            self._state = _State.ENDED
            raise
        for buffered_side, buf in self._buffers.items():
            if len(buf) > self.max_pending:
                self._state = _State.ENDED
                raise ScpProtocolError(
                    f"the {buffered_side.value} sent {len(buf)} bytes out of turn "
                    f"({self._state.value})"
                )
        return out

    def _take_line(self, side: _Side) -> bytes | None:
        buf = self._buffers[side]
        end = buf.find(b"\n", 0, MAX_LINE + 1)
        if end < 0:
            if len(buf) > MAX_LINE:
                raise ScpProtocolError(f"line from the {side.value} too long")
            return None
        line = bytes(buf[:end])
        del buf[: end + 1]
        return line

    def _take_ack(self) -> tuple[int, str | None] | None:
        buf = self._buffers[_Side.SINK]
        if not buf:
            return None
        code = buf[0]
        if code == 0:
            del buf[:1]
            return 0, None
        if code not in (1, 2):
            raise ScpProtocolError(f"bad acknowledgement byte 0x{code:02x}")
        line = self._take_line(_Side.SINK)
        if line is None:
            return None
        return code, _escape(line[1:])

    def _step(self, out: list[ScpFile]) -> bool:
        """Makes one protocol step if its bytes are there; False when waiting."""
        state = self._state
        if state is _State.START:
            ack = self._take_ack()
            if ack is None:
                return False
            self._state = _State.CONTROL if ack[0] == 0 else _State.ENDED
            return True
        if state is _State.CONTROL:
            line = self._take_line(_Side.SOURCE)
            if line is None:
                return False
            self._control(line)
            return True
        if state is _State.DATA:
            return self._data(out)
        if state is _State.STATUS:
            return self._status(out)
        if state is _State.ACK:
            ack = self._take_ack()
            if ack is None:
                return False
            self._acked(ack[0], ack[1], out)
            return True
        return False  # ENDED

    def _control(self, line: bytes) -> None:
        if not line:
            raise ScpProtocolError("unexpected empty line")
        kind, body = line[:1], line[1:]
        if kind in (b"\x01", b"\x02"):
            if kind == b"\x02":
                self._state = _State.ENDED
            return  # the source's own error message; not acknowledged
        if kind == b"T":
            parts = body.split(b" ")
            if len(parts) != 4:
                raise ScpProtocolError("bad times line")
            for part, what in zip(
                parts, ("mtime", "mtime usec", "atime", "atime usec"), strict=True
            ):
                _digits(part, what)
            self._await(_AckFor.TIMES)
            return
        if kind == b"E":
            if body:
                raise ScpProtocolError("bad end-of-directory line")
            if not self._dirs:
                raise ScpProtocolError("end of directory outside any directory")
            self._await(_AckFor.END)
            return
        if kind not in (b"C", b"D"):
            raise ScpProtocolError(f"expected a control line, got {_escape(line[:64])!r}")
        mode_raw, sep, rest = body.partition(b" ")
        if not sep or len(mode_raw) != 4 or any(c not in b"01234567" for c in mode_raw):
            raise ScpProtocolError("bad mode")
        size_raw, sep, name_raw = rest.partition(b" ")
        if not sep:
            raise ScpProtocolError("size not delimited")
        size = _digits(size_raw, "size")
        name = _name(name_raw)
        mode = int(mode_raw, 8)
        if kind == b"D":
            if not self.request.recursive:
                raise ScpProtocolError("received a directory without -r")
            if len(self._dirs) >= MAX_DEPTH:
                raise ScpProtocolError("directories nested too deeply")
            self._pending_name = (name, mode)
            self._await(_AckFor.DIRECTORY)
            return
        path = "/".join([*self._dirs, name])
        self._current = _Current(
            path=path, mode=mode, size=size, remaining=size, digest=hashlib.sha256()
        )
        self._await(_AckFor.FILE)

    def _await(self, what: _AckFor) -> None:
        self._state = _State.ACK
        self._ack_for = what

    def _acked(self, code: int, message: str | None, out: list[ScpFile]) -> None:
        what = self._ack_for
        self._ack_for = None
        fatal = code == 2
        if what is _AckFor.FILE:
            if code == 0:
                self._state = _State.DATA
                return
            out.append(self._finish(completed=False, error=message))
        elif what is _AckFor.DATA:
            current = self._current
            ok = code == 0 and current is not None and current.error is None
            error = message if current is None or current.error is None else current.error
            out.append(self._finish(completed=ok, error=error))
        elif what is _AckFor.DIRECTORY:
            if code == 0 and self._pending_name is not None:
                self._dirs.append(self._pending_name[0])
            self._pending_name = None
        elif what is _AckFor.END:
            self._dirs.pop()
        self._state = _State.ENDED if fatal else _State.CONTROL

    def _data(self, out: list[ScpFile]) -> bool:
        current = self._current
        buf = self._buffers[_Side.SOURCE]
        if current is None:  # pragma: no cover - DATA is entered with a current file
            raise ScpProtocolError("file data without a file")
        if current.remaining == 0:
            self._state = _State.STATUS
            return True
        if not buf:
            return False
        take = min(current.remaining, len(buf))
        with memoryview(buf) as view:
            current.digest.update(view[:take])
        del buf[:take]
        current.remaining -= take
        if current.remaining == 0:
            self._state = _State.STATUS
        return True

    def _status(self, out: list[ScpFile]) -> bool:
        buf = self._buffers[_Side.SOURCE]
        if not buf:
            return False
        code = buf[0]
        current = self._current
        assert current is not None
        if code == 0:
            del buf[:1]
        elif code in (1, 2):
            line = self._take_line(_Side.SOURCE)
            if line is None:
                return False
            current.error = _escape(line[1:])
            if code == 2:
                out.append(self._finish(completed=False, error=current.error))
                self._state = _State.ENDED
                return True
        else:
            raise ScpProtocolError(f"bad end-of-file status byte 0x{code:02x}")
        self._await(_AckFor.DATA)
        return True

    def _finish(self, *, completed: bool, error: str | None) -> ScpFile:
        current = self._current
        assert current is not None
        self._current = None
        transferred = current.size - current.remaining
        record = ScpFile(
            direction=self.request.direction,
            path=current.path,
            mode=current.mode,
            size=current.size,
            transferred=transferred,
            sha256=current.digest.hexdigest() if transferred else _EMPTY_SHA256,
            completed=completed,
            error=error,
        )
        self._files.append(record)
        return record

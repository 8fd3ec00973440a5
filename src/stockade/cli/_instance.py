"""One ``stockade up`` per data dir: its lock, its status file, and probes of what it serves.

``<data dir>/stockade.lock`` is held with an exclusive ``flock`` for the life of the process
(the kernel drops it when the process dies, so a crash never leaves a stale lock); it holds the
holder's PID, which a second ``stockade up`` names when it refuses to start.
``<data dir>/run/status.json`` (0600) says what runs: pid, start time, versions, data dir and
listeners. ``stockade status`` reads it, checks that the lock is still held, and probes each
listener (TCP connect, or a unix-socket connect).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from stockade import __version__
from stockade.core import StockadeError, UserError
from stockade.core.files import write_private

__all__ = [
    "LOCK_NAME",
    "STATUS_NAME",
    "InstanceLock",
    "Probe",
    "lock_holder",
    "probe_listener",
    "read_status",
    "remove_status",
    "write_status",
]

LOCK_NAME = "stockade.lock"
STATUS_NAME = "run/status.json"
_MAX_STATUS_BYTES = 1 << 20
_HOST_PORT = re.compile(
    r"^(?:[a-z][a-z0-9+.-]*://)?(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:/\[\]]+)):(?P<port>\d{1,5})(?:/.*)?$"
)


class InstanceLock:
    """The exclusive lock on a data dir; :meth:`acquire` raises a UserError naming the holder."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f"pid {holder}" if holder else "another process"
            raise UserError(
                f"{self.path.parent}: data dir in use by {who} (stockade up holds {self.path});"
                " stop it first or pass another --data-dir"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> InstanceLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 32).decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else None


def lock_holder(data_dir: Path) -> int | None:
    """The PID holding ``data_dir``'s lock, 0 when held by an unknown PID, None when free."""
    path = data_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_pid(fd) or 0
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def write_status(
    data_dir: Path,
    listeners: Sequence[tuple[str, str]],
    *,
    started: str | None = None,
    **extra: Any,
) -> Path:
    """Write ``run/status.json`` for this process (0600, atomic); ``started`` defaults to now
    (a rewrite passes the first one)."""
    path = data_dir / STATUS_NAME
    document = {
        "pid": os.getpid(),
        "started": started or datetime.now(UTC).isoformat(timespec="seconds"),
        "data_dir": str(data_dir.resolve()),
        "versions": {
            "stockade": __version__,
            "python": ".".join(str(part) for part in sys.version_info[:3]),
        },
        "listeners": [{"service": what, "address": where} for what, where in listeners],
        **extra,
    }
    write_private(path, (json.dumps(document, indent=2, sort_keys=True) + "\n").encode())
    return path


def remove_status(data_dir: Path) -> None:
    """Remove the status file (only the lock holder calls this)."""
    (data_dir / STATUS_NAME).unlink(missing_ok=True)


def read_status(data_dir: Path) -> dict[str, Any] | None:
    """The status file's document; None when absent. A malformed file is a StockadeError."""
    path = data_dir / STATUS_NAME
    try:
        with path.open("rb") as handle:
            data = handle.read(_MAX_STATUS_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StockadeError(f"{path}: cannot read the status file ({exc.strerror})") from None
    try:
        if len(data) > _MAX_STATUS_BYTES:
            raise ValueError("too large")
        document = json.loads(data.decode("utf-8"))
        if not isinstance(document, dict) or not isinstance(document.get("listeners"), list):
            raise ValueError("not a status document")
    except ValueError as exc:
        raise StockadeError(f"{path}: malformed status file ({exc})") from None
    return document


@dataclass(frozen=True)
class Probe:
    """How one listener answered: ``state`` is ``up``, ``down`` or ``-`` (nothing to probe)."""

    state: str
    detail: str = ""
    seconds: float = 0.0


def probe_listener(address: str, *, timeout: float = 1.0) -> Probe:
    """Connect to ``address`` (``host:port``, ``[v6]:port``, ``scheme://host:port/...`` or a unix
    socket path ending in ``.sock``); anything else is not probed."""
    started = time.perf_counter()
    if address.startswith("/") and address.endswith(".sock"):
        family, target = socket.AF_UNIX, address
    else:
        found = _HOST_PORT.match(address)
        if found is None or address.startswith("sqlite"):
            return Probe("-", "not a network address")
        host = found.group("v6") or found.group("host")
        family = socket.AF_INET6 if found.group("v6") else socket.AF_INET
        port = int(found.group("port"))
        if port > 65535:  # connect() raises OverflowError, not OSError
            return Probe("-", "not a network address")
        target = (host, port)  # type: ignore[assignment]
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(target)
    except OSError as exc:
        return Probe("down", exc.strerror or type(exc).__name__, time.perf_counter() - started)
    return Probe("up", "", time.perf_counter() - started)

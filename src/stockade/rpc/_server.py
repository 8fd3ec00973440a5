"""The internal API server: identity and authz on gRPC, over mutual TLS and the admin socket.

Two listeners share one ``grpc.aio`` server:

- TCP ``host:port`` with mutual TLS (client certificates from the same CA required; certificates
  are re-read when their files change), for services split across processes;
- a unix socket inside a 0700 directory of the data dir, for the ``stockade`` CLI on the same
  host: file permissions are the authentication, as with Docker's socket.

Both answer the standard health service (``grpc.health.v1.Health``): ``""`` and each served
service are ``SERVING`` from :meth:`RpcServer.start` until :meth:`RpcServer.stop` begins, when
they turn ``NOT_SERVING`` so load balancers drain the server first. ``interceptors`` (e.g.
:class:`ServiceAuthInterceptor` for projected service-account tokens) run on every call.
"""

from __future__ import annotations

import os
import secrets
import socket
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from grpc import aio
from grpc_health.v1 import _async as health_aio  # what health.aio re-exports
from grpc_health.v1 import health_pb2, health_pb2_grpc

from stockade.authz import Authorizer
from stockade.core import BackendError, get_logger
from stockade.identity import IdentityService
from stockade.tls import CertificateFiles, ProjectedToken, grpc_server_credentials

from ._authz import AuthzServicer
from ._callers import Publisher as _Publisher
from ._channel import ReloadingChannel
from ._gen import authz_pb2, authz_pb2_grpc, identity_pb2, identity_pb2_grpc
from ._identity import IdentityServicer
from ._service_auth import service_token_credentials

__all__ = ["RpcServer", "admin_channel", "mtls_channel"]

log = get_logger("stockade.rpc")

#: The name the dev CA puts in server certificates; clients check it instead of the address.
SERVER_NAME = "localhost"

#: Seconds a client connection lives before the server asks it (GOAWAY) to reconnect, so the
#: peer's certificate is checked again by a fresh handshake; calls on it finish first.
MAX_CONNECTION_AGE = 60.0

#: Seconds calls still open on an aged connection have to finish.
CONNECTION_AGE_GRACE = 10.0


class RpcServer:
    """Serves :class:`IdentityService` and/or :class:`Authorizer` until :meth:`stop`; with
    neither (``stockade serve gateway``, ``shield``, ...), only the health service. Identity's
    refusals of a caller's certificate are audited on ``publisher`` (``service.rejected``)."""

    def __init__(
        self,
        *,
        identity: IdentityService | None,
        authorizer: Authorizer | None,
        tls: CertificateFiles,
        host: str = "127.0.0.1",
        port: int = 0,
        admin_socket: Path | None = None,
        interceptors: Sequence[aio.ServerInterceptor[Any, Any]] = (),
        publisher: _Publisher | None = None,
        max_connection_age: float = MAX_CONNECTION_AGE,
    ) -> None:
        # SO_REUSEPORT (gRPC's default on Linux) would let a second instance bind the same port
        # silently and take half of the connections. A client certificate is verified only at
        # the TLS handshake: without a connection age, a peer whose certificate expired (or was
        # rotated out) kept calling on its old connection for as long as it kept it open.
        self._server = aio.server(
            options=[
                ("grpc.so_reuseport", 0),
                ("grpc.max_connection_age_ms", int(max_connection_age * 1000)),
                ("grpc.max_connection_age_grace_ms", int(CONNECTION_AGE_GRACE * 1000)),
            ],
            interceptors=list(interceptors),
        )
        self._services = [""]
        if identity is not None:
            identity_pb2_grpc.add_IdentityServicer_to_server(
                IdentityServicer(identity, publisher=publisher), self._server
            )
            self._services.append(identity_pb2.DESCRIPTOR.services_by_name["Identity"].full_name)
        if authorizer is not None:
            authz_pb2_grpc.add_AuthzServicer_to_server(
                AuthzServicer(authorizer, publisher=publisher), self._server
            )
            self._services.append(authz_pb2.DESCRIPTOR.services_by_name["Authz"].full_name)
        self.health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        self._tls = tls
        self._host = host
        self._requested_port = port
        self.port = 0
        self.admin_socket = admin_socket
        self._socket_id: tuple[int, int] | None = None

    async def start(self) -> None:
        address = f"[{self._host}]" if ":" in self._host else self._host
        try:
            self.port = self._server.add_secure_port(
                f"{address}:{self._requested_port}", grpc_server_credentials(self._tls)
            )
        except RuntimeError as exc:
            raise BackendError(
                f"cannot listen on {self._host}:{self._requested_port} for the internal API"
                f" ({exc}); pick another port with STOCKADE_API__PORT"
            ) from None
        bound: Path | None = None
        if self.admin_socket is not None:
            self.admin_socket.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(self.admin_socket.parent, 0o700)
            _claim_socket(self.admin_socket)
            # gRPC unlinks the path it bound when it shuts down, whoever holds that path by
            # then: bind a private name and rename it into place, so only our stop() (which
            # checks the inode) ever removes the admin socket.
            bound = self.admin_socket.with_name(f".{self.admin_socket.name}.{secrets.token_hex(4)}")
            self._server.add_insecure_port(f"unix:{bound}")
        await self._server.start()
        for name in self._services:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if self.admin_socket is not None and bound is not None:
            os.chmod(bound, 0o600)
            os.rename(bound, self.admin_socket)
            info = os.stat(self.admin_socket)
            self._socket_id = (info.st_dev, info.st_ino)
        log.info("rpc.listening", host=self._host, port=self.port, admin=str(self.admin_socket))

    @property
    def tls_error(self) -> str | None:
        """Why the last certificate change was refused (the old one still serves), else None;
        for ``stockade status``."""
        return self._tls.error

    async def stop(self, grace: float = 2.0) -> None:
        await self.health.enter_graceful_shutdown()
        await self._server.stop(grace)
        if self.admin_socket is not None and self._socket_id is not None:
            # only the socket this server created: another instance may have bound the path since
            try:
                info = os.stat(self.admin_socket)
            except FileNotFoundError:
                return
            if (info.st_dev, info.st_ino) == self._socket_id:
                self.admin_socket.unlink(missing_ok=True)
            self._socket_id = None


def _claim_socket(path: Path) -> None:
    """Remove a stale socket at ``path``; refuse one that a live server still answers on."""
    if not path.exists() and not path.is_symlink():
        return
    if not stat.S_ISSOCK(os.lstat(path).st_mode):
        raise BackendError(f"{path} exists and is not a socket; remove it or set api.admin_socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except OSError:
        path.unlink(missing_ok=True)  # nobody listens: left by a process that died
        return
    finally:
        probe.close()
    raise BackendError(
        f"admin socket {path} is in use by another running instance; stop it or set"
        " STOCKADE_API__ADMIN_SOCKET to another path"
    )


def mtls_channel(
    host: str,
    port: int,
    tls: CertificateFiles,
    *,
    token: ProjectedToken | None = None,
    server_name: str = SERVER_NAME,
) -> aio.Channel:
    """A client channel to another service, authenticated both ways by certificates.

    The channel follows rotation of ``tls``'s files (new CA bundle, new client certificate: see
    :class:`ReloadingChannel`); with ``token``, every call also presents that projected
    service-account token (re-read each call).
    """
    address = f"[{host}]" if ":" in host else host
    return ReloadingChannel(
        f"{address}:{port}",
        tls,
        call_credentials=None if token is None else service_token_credentials(token),
        options=[("grpc.ssl_target_name_override", server_name)],
    )


def admin_channel(socket_path: Path) -> aio.Channel:
    """A client channel over the admin unix socket."""
    return aio.insecure_channel(f"unix:{socket_path}")

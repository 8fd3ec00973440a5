"""The Gateway: listeners, admission (deny-list, limits, PROXY header), host keys, lifecycle.

Accepting is ours, not asyncssh's: each TCP connection is checked against the deny-list and the
connection limits and (when configured) stripped of its PROXY header before a single SSH byte is
sent; only then is the socket handed to :func:`asyncssh.run_server`. ``stop(grace)`` closes the
listeners, lets sessions finish for ``grace`` seconds, then closes them with a message.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import socket
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

import asyncssh

from stockade.core.errors import ConfigError, StockadeError
from stockade.core.events import AuthFailed
from stockade.core.files import write_private
from stockade.core.logging import get_logger
from stockade.core.settings import GatewaySettings

from ._auth import AuthServices, ConnectionAuth
from ._limits import Admission, ConnectionLimits
from ._policy import Policy
from ._ports import AuthzPort, DenyList, EventPublisher, IdentityPort
from ._proxy_protocol import read_header
from ._server import GatewayServer
from ._session import LiveSession, SessionServices, run_session
from .backends import WorkspaceBackend
from .backends.local import HomeHook, LocalBackend
from .backends.ssh import SshBackend

__all__ = ["ALGORITHMS", "Gateway", "load_or_create_key", "upstream_public_key"]

_log = get_logger("stockade.gateway")

#: Modern algorithms only: no ssh-rsa (SHA-1) signatures, no CBC, no SHA-1 key exchange.
ALGORITHMS: dict[str, list[str]] = {
    "kex_algs": [
        "curve25519-sha256",
        "curve25519-sha256@libssh.org",
        "ecdh-sha2-nistp256",
        "ecdh-sha2-nistp384",
        "ecdh-sha2-nistp521",
        "diffie-hellman-group16-sha512",
        "diffie-hellman-group18-sha512",
        "diffie-hellman-group14-sha256",
    ],
    "encryption_algs": [
        "chacha20-poly1305@openssh.com",
        "aes128-gcm@openssh.com",
        "aes256-gcm@openssh.com",
        "aes128-ctr",
        "aes192-ctr",
        "aes256-ctr",
    ],
    "mac_algs": [
        "hmac-sha2-256-etm@openssh.com",
        "hmac-sha2-512-etm@openssh.com",
        "umac-128-etm@openssh.com",
        "hmac-sha2-256",
        "hmac-sha2-512",
    ],
    "signature_algs": [
        "ssh-ed25519",
        "sk-ssh-ed25519@openssh.com",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ecdsa-sha2-nistp256@openssh.com",
        "rsa-sha2-512",
        "rsa-sha2-256",
    ],
    "compression_algs": ["none"],
}

_HOST_KEYS = (
    ("ssh_host_ed25519_key", "ssh-ed25519"),
    ("ssh_host_ecdsa_key", "ecdsa-sha2-nistp256"),
)
#: How often live sessions are compared with the registry (``stockade sessions kill``).
_KILL_POLL_SECONDS = 1.0
#: What the user of a session ended by ``stockade sessions kill`` reads on stderr.
KILL_MESSAGE = "session terminated by an administrator"
#: What the users of sessions still open when the gateway stops read on stderr.
STOP_MESSAGE = "the gateway is shutting down"


def load_or_create_key(path: Path, alg: str) -> asyncssh.SSHKey:
    """Load a private key, generating it (mode 0600) when missing."""
    if path.exists():
        return asyncssh.read_private_key(str(path))
    key = asyncssh.generate_private_key(alg)
    write_private(path, key.export_private_key())
    write_private(path.with_name(path.name + ".pub"), key.export_public_key(), mode=0o644)
    return key


def upstream_public_key(data_dir: Path) -> str:
    """The key (OpenSSH format) the gateway presents to ``ssh`` backends' upstream sshd."""
    key = load_or_create_key(data_dir / "gateway" / "upstream_ed25519_key", "ssh-ed25519")
    return str(key.export_public_key().decode().strip())


class Gateway:
    """Stockade's SSH gateway. Construct, ``await start()``, later ``await stop(grace)``.

    ``identity``, ``authz`` and ``publisher`` are the in-process services (or their gRPC
    clients); ``deny_list`` is SSH Shield's, asked at every accept. State (host keys, the
    upstream client key, known upstream host keys, workspace homes, recordings) lives under
    ``data_dir``.
    """

    def __init__(
        self,
        *,
        settings: GatewaySettings,
        identity: IdentityPort,
        authz: AuthzPort,
        publisher: EventPublisher,
        deny_list: DenyList | None = None,
        data_dir: Path,
        prepare_home: HomeHook | None = None,
    ) -> None:
        self.settings = settings
        self.data_dir = data_dir
        self.gateway_id = settings.gateway_id or socket.gethostname()
        self._identity = identity
        self._publisher = publisher
        self._deny_list = deny_list
        self._prepare_home = prepare_home
        self._policy = Policy(authz)
        self._limits = ConnectionLimits(
            max_total=settings.max_connections, max_per_source=settings.max_connections_per_source
        )
        self._state_dir = data_dir / "gateway"
        self._listeners: list[socket.socket] = []
        self._accept_tasks: list[asyncio.Task[None]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._conns: set[Any] = set()
        self._live: dict[str, LiveSession] = {}
        self._ids = itertools.count(1)
        self._options: asyncssh.SSHServerConnectionOptions | None = None
        self._auth_services: AuthServices | None = None
        self._session_services: SessionServices | None = None
        self._stopping = False

    # -- public surface ------------------------------------------------------------------

    @property
    def listening(self) -> list[tuple[str, int]]:
        """The (host, port) pairs accepting connections; empty before start and after stop."""
        return [sock.getsockname()[:2] for sock in self._listeners]

    @property
    def live_sessions(self) -> list[str]:
        """Ids of the sessions running now."""
        return list(self._live)

    @property
    def upstream_public_key(self) -> str:
        """The key (OpenSSH format) the gateway presents to ``ssh`` backends' upstream sshd."""
        return upstream_public_key(self.data_dir)

    async def start(self) -> None:
        """Generate or load host keys and listen on ``host`` (and ``extra_hosts``)."""
        if self._listeners:
            raise RuntimeError("gateway already started")
        settings = self.settings
        host_keys = [load_or_create_key(self._state_dir / name, alg) for name, alg in _HOST_KEYS]
        self._options = asyncssh.SSHServerConnectionOptions(
            server_host_keys=host_keys,
            login_timeout=settings.login_timeout,
            keepalive_interval=30,
            keepalive_count_max=4,
            encoding=None,
            line_editor=False,
            allow_pty=True,
            agent_forwarding=True,
            x11_forwarding=False,
            **ALGORITHMS,
        )
        background = self._background
        self._auth_services = AuthServices(
            identity=self._identity,
            policy=self._policy,
            publisher=self._publisher,
            gateway_id=self.gateway_id,
            max_failures=settings.max_auth_failures,
            password_auth=settings.password_auth,
            background=background,
        )
        backends: dict[str, WorkspaceBackend] = {
            "local": LocalBackend(
                root=self.data_dir / "workspaces",
                data_dir=self.data_dir,
                sandbox=settings.sandbox,
                shell=settings.shell,
                prepare_home=self._prepare_home,
            ),
        }
        upstream = SshBackend(
            client_key=load_or_create_key(self._state_dir / "upstream_ed25519_key", "ssh-ed25519"),
            known_hosts=self._state_dir / "upstream_known_hosts.json",
            connect_timeout=settings.upstream_connect_timeout,
        )
        backends["ssh"] = backends["sshd"] = upstream
        self._session_services = SessionServices(
            identity=self._identity,
            policy=self._policy,
            publisher=self._publisher,
            backends=backends,
            recordings=self.data_dir / "recordings",
            recording_max_bytes=settings.recording_max_bytes,
            api_url=settings.api_url or "https://127.0.0.1:8443",
            accept_env=tuple(settings.accept_env),
            live=self._live,
            background=background,
        )
        port = settings.port
        try:
            for host in [settings.host, *settings.extra_hosts]:
                sock = self._bind(host, port)
                self._listeners.append(sock)
                port = sock.getsockname()[1]
        except OSError as exc:
            self._close_listeners()
            raise ConfigError(
                f"gateway cannot listen on {host} port {port}: {exc.strerror}; "
                "set gateway.port (STOCKADE_GATEWAY__PORT) or free the port"
            ) from exc
        for sock in self._listeners:
            self._accept_tasks.append(asyncio.create_task(self._accept_loop(sock)))
        self._background(self._watch_kills())
        _log.info("gateway_listening", addresses=self.listening, gateway_id=self.gateway_id)

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting, give sessions ``grace`` seconds (default ``stop_grace``), then close
        the rest with a message and drop every connection."""
        grace = self.settings.stop_grace if grace is None else grace
        self._stopping = True
        for task in self._accept_tasks:
            task.cancel()
        self._close_listeners()
        self._accept_tasks.clear()
        live = list(self._live.values())
        if live and grace > 0:
            waiters = [asyncio.ensure_future(session.done.wait()) for session in live]
            await asyncio.wait(waiters, timeout=grace)
            for waiter in waiters:
                waiter.cancel()
        for session in list(self._live.values()):
            await session.terminate("gateway_stopped", STOP_MESSAGE)
        for conn in list(self._conns):
            conn.disconnect(asyncssh.DISC_BY_APPLICATION, "gateway shutting down")
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        _log.info("gateway_stopped")

    # -- internals -----------------------------------------------------------------------

    def _background(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _log.error("gateway_task_failed", error=repr(task.exception()))

    @staticmethod
    def _bind(host: str, port: int) -> socket.socket:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((host, port))
            sock.listen(1024)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return sock

    def _close_listeners(self) -> None:
        for sock in self._listeners:
            sock.close()
        self._listeners.clear()

    async def _accept_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping:
            try:
                sock, peer = await loop.sock_accept(listener)
            except OSError as exc:
                _log.warning("accept_failed", error=str(exc))
                await asyncio.sleep(0.1)
                continue
            self._background(self._serve(sock, peer[0], peer[1]))

    async def _publish_failure(self, ip: str, port: int, reason: str) -> None:
        try:
            await self._publisher.publish(
                AuthFailed(
                    client_ip=ip,
                    client_port=port,
                    username="",
                    method="none",
                    reason=reason,
                    gateway_id=self.gateway_id,
                )
            )
        except StockadeError as exc:
            _log.warning("event_not_published", error=str(exc))

    async def _serve(self, sock: socket.socket, ip: str, port: int) -> None:
        conn_id = next(self._ids)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._deny_list is not None and self._deny_list.is_banned(ip):
            _log.info("refused_banned", conn=conn_id, client=ip)
            sock.close()
            return
        if self.settings.proxy_protocol:
            if not _trusted_proxy(ip, self.settings.proxy_trusted):
                _log.warning("untrusted_proxy_peer", conn=conn_id, peer=ip)
                sock.close()
                await self._publish_failure(ip, port, "untrusted_proxy")
                return
            try:
                addresses = await asyncio.wait_for(
                    read_header(lambda n: _read_exact(sock, n)), self.settings.handshake_timeout
                )
            except (StockadeError, OSError, EOFError, TimeoutError) as exc:
                _log.info("bad_proxy_header", conn=conn_id, peer=ip, error=str(exc) or "timeout")
                sock.close()
                await self._publish_failure(ip, port, "bad_proxy_header")
                return
            if addresses is not None:
                ip, port = addresses.source_ip, addresses.source_port
                if self._deny_list is not None and self._deny_list.is_banned(ip):
                    _log.info("refused_banned", conn=conn_id, client=ip)
                    sock.close()
                    return
        admission = self._limits.admit(ip)
        if admission is not Admission.ADMITTED:
            _log.info("refused_limit", conn=conn_id, client=ip, reason=admission.value)
            sock.close()
            await self._publish_failure(ip, port, admission.value)
            return
        try:
            await self._run_ssh(sock, conn_id, ip, port)
        finally:
            self._limits.release(ip)

    async def _run_ssh(self, sock: socket.socket, conn_id: int, ip: str, port: int) -> None:
        assert self._auth_services is not None
        assert self._session_services is not None
        auth = ConnectionAuth(self._auth_services, conn_id, ip, port)
        sessions = self._session_services
        closed = asyncio.Event()
        holder: list[Any] = []

        def on_connection(conn: Any) -> None:
            holder.append(conn)
            self._conns.add(conn)

        def factory() -> GatewayServer:
            return GatewayServer(
                auth=auth,
                policy=self._policy,
                run_session=lambda a, p: run_session(sessions, a, p),
                max_channels=self.settings.max_channels_per_connection,
                on_connection=on_connection,
                forward_to_loopback=self.settings.forward_to_loopback,
            )

        loop = asyncio.get_running_loop()

        def handshake_expired() -> None:
            if not auth.auth_begun and holder:
                auth.close_reason = "handshake_timeout"
                _log.info("handshake_timeout", conn=conn_id, client=ip)
                holder[0].abort()

        timer = loop.call_later(self.settings.handshake_timeout, handshake_expired)
        options = asyncssh.SSHServerConnectionOptions(options=self._options, server_factory=factory)
        try:
            conn = await asyncssh.run_server(sock, options=options)
            await conn.wait_closed()
        except (TimeoutError, asyncssh.Error, OSError) as exc:
            _log.debug("connection_ended", conn=conn_id, error=str(exc))
        finally:
            timer.cancel()
            closed.set()
            if holder:
                self._conns.discard(holder[0])
                with contextlib.suppress(Exception):
                    holder[0].abort()
            with contextlib.suppress(OSError):
                sock.close()

    async def _watch_kills(self) -> None:
        while not self._stopping:
            await asyncio.sleep(_KILL_POLL_SECONDS)
            if not self._live:
                continue
            try:
                rows = await self._identity.list_sessions(active_only=True, limit=1_000_000)
            except StockadeError as exc:
                _log.warning("session_poll_failed", error=str(exc))
                continue
            still = {row.session_id for row in rows}
            for session_id, session in list(self._live.items()):
                if session_id not in still and not session.end_reason:
                    _log.info("session_killed", session=session_id)
                    self._background(session.terminate("killed", KILL_MESSAGE))


async def _read_exact(sock: socket.socket, size: int) -> bytes:
    loop = asyncio.get_running_loop()
    data = bytearray()
    while len(data) < size:
        chunk = await loop.sock_recv(sock, size - len(data))
        if not chunk:
            raise EOFError("connection closed during the PROXY header")
        data += chunk
    return bytes(data)


def _trusted_proxy(
    ip: str, trusted: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]
) -> bool:
    """True when ``ip`` belongs to one of the load balancers allowed to send PROXY headers."""
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in trusted)

"""The asyncssh ``SSHServer`` of one connection: thin hooks that hand questions on.

Every hook denies unless identity and policy say otherwise. Host-based and GSS authentication
are never offered; X11 forwarding is refused by asyncssh itself (``x11_forwarding=False``), and
so is Unix-socket forwarding (asyncssh's default). Credentials go to :class:`~._login.LoginFlow`;
once a credential is accepted the connection is registered as one session (identity's
``open_session``) that its channels and forwards share.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any

import asyncssh
from asyncssh.forward import SSHForwarder

from stockade.authz import AuthzAPI
from stockade.core.errors import StockadeError
from stockade.core.logging import escape_peer, get_logger

from ._live import LiveConnection
from ._login import LoginFlow
from ._policy import decide
from ._session import ChannelServices, ChannelSession
from .backends import SessionSpec

__all__ = ["GatewayServer"]

_log = get_logger("stockade.gateway.server")

#: Distinct forwards remembered per connection for re-deciding them when roles change (bounded
#: memory; a policy deciding on the role alone needs only the first).
_MAX_TRACKED_FORWARDS = 256

#: What the peer's bytes do to asyncssh's parser (PerSourcePenalties' ``crash``); a client that
#: merely hangs up (``ConnectionLost``, its own disconnect) is not one.
_PARSER_ERRORS = (
    asyncssh.ProtocolError,
    asyncssh.ProtocolNotSupported,
    asyncssh.KeyExchangeFailed,
    asyncssh.MACError,
    asyncssh.CompressionError,
)

#: Listen addresses ``ssh -R`` may ask for.
_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def _gateway_internal(address: str) -> bool:
    """True for addresses that reach the gateway host itself or its link: loopback, link-local,
    unspecified, multicast, and every address assigned to one of the host's interfaces (a
    service bound to all interfaces answers on those too)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback or ip.is_link_local or ip.is_unspecified or ip.is_multicast:
        return True
    return _assigned_here(ip)


def _assigned_here(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """True when ``ip`` is an address of this host: binding a socket to it succeeds."""
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((str(ip), 0))
        except OSError:
            return False
    return True


class GatewayServer(asyncssh.SSHServer):
    """Hooks of one SSH connection.

    ``flow`` decides credentials; ``on_login(live)`` registers a logged-in connection as the
    session every channel and forward joins (channels wait for it);
    ``reserved_ports`` are ports ``ssh -R`` may never listen on (Stockade's own).
    """

    def __init__(
        self,
        *,
        flow: LoginFlow,
        authz: AuthzAPI,
        channels: ChannelServices,
        on_login: Callable[[LiveConnection], Awaitable[None]],
        on_connection: Callable[[asyncssh.SSHServerConnection], None],
        max_channels: int,
        reserved_ports: Collection[int] = (),
        forward_to_loopback: bool = False,
    ) -> None:
        self._flow = flow
        self._authz = authz
        self._channels = channels
        self._on_login = on_login
        self._on_connection = on_connection
        self._max_channels = max_channels
        self._reserved_ports = frozenset(reserved_ports)
        self._forward_to_loopback = forward_to_loopback
        self._conn: asyncssh.SSHServerConnection | None = None
        self._live: LiveConnection | None = None
        self._open_channels = 0

    # -- connection ----------------------------------------------------------------------------

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        """Called once the socket is handed to asyncssh."""
        self._conn = conn
        self._on_connection(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        """Called once when the connection closes. One that never logged in publishes its one
        failure here (unless a credential of it already did)."""
        flow = self._flow
        if exc is not None and flow.login is None:
            _log.info("connection_failed", conn=flow.conn_id, client=flow.client_ip, error=str(exc))
            if "timeout" in str(exc).lower():
                flow.timed_out = True
            elif flow.close_reason is None and isinstance(exc, _PARSER_ERRORS):
                flow.close_reason = "protocol_error"
        flow.connection_closed()

    def _disconnect(self, code: int, reason: str) -> None:
        if self._conn is not None:
            self._conn.disconnect(code, reason)

    # -- authentication ------------------------------------------------------------------------

    def begin_auth(self, username: str) -> bool:
        """A client names a user (``alice`` or ``alice+ws2``); called again for each new name.
        Returns True: authentication is always required. Nothing is looked up yet, so the answer
        is the same whether the user or workspace exists."""
        self._flow.begin(username)
        return True

    def public_key_auth_supported(self) -> bool:
        """Public keys are offered unless a TOTP code must come first (``require_mfa``)."""
        return self._flow.offers_public_key()

    def password_auth_supported(self) -> bool:
        """Passwords are offered when enabled in settings (after TOTP with ``require_mfa``)."""
        return self._flow.offers_password()

    def kbdint_auth_supported(self) -> bool:
        """Keyboard-interactive asks for a TOTP code, until one was right."""
        return self._flow.offers_totp()

    async def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        """May ``username`` log in with ``key``? Called for the client's query and again for the
        signed request (asyncssh checks the signature after a True). False for anything unknown;
        the connection is closed once its attempts are used up."""
        accepted = await self._flow.check_key(username, key.get_fingerprint("sha256"))
        if not accepted:
            self._check_attempts()
        return accepted

    async def validate_password(self, username: str, password: str) -> bool:
        """Is ``password`` right for ``username``, and does policy allow password login?"""
        accepted = await self._flow.check_password(username, password)
        if not accepted:
            self._check_attempts()
        return accepted

    def get_kbdint_challenge(
        self, username: str, lang: str, submethods: str
    ) -> tuple[str, str, str, list[tuple[str, bool]]]:
        """The TOTP prompt."""
        self._flow.begin(username)
        return ("Stockade", "Two-factor authentication", "", [("TOTP code: ", False)])

    async def validate_kbdint_response(self, username: str, responses: Sequence[str]) -> bool:
        """Checks the TOTP code. Always False: a right code unlocks the next method (public key
        or password), which completes the login."""
        code = responses[0] if len(responses) == 1 else ""
        await self._flow.check_totp(username, code)
        self._check_attempts()
        return False

    def _check_attempts(self) -> None:
        if self._flow.exhausted and self._flow.login is None:
            self._disconnect(asyncssh.DISC_NO_MORE_AUTH_METHODS_AVAILABLE, "too many attempts")

    async def auth_completed(self) -> None:
        """The credential (and its signature) was accepted: the connection becomes a session."""
        assert self._conn is not None
        # channels may be requested before the registry answers: they find the connection
        # here at once and wait for ``live.opened``
        self._live = LiveConnection(self._flow.succeeded(), self._conn)
        await self._on_login(self._live)

    # -- channels ------------------------------------------------------------------------------

    def _channel_closed(self, _: Any = None) -> None:
        self._open_channels -= 1

    def _may_open_channel(self) -> bool:
        live = self._live
        if live is None or live.closing or self._open_channels >= self._max_channels:
            return False
        self._open_channels += 1
        return True

    def session_requested(self) -> asyncssh.SSHServerSession[bytes] | bool:
        """A session channel (shell, exec, sftp, scp), decided when its request is made. False
        (refused) before login, while the session is ending, or beyond the channel limit."""
        if not self._may_open_channel():
            return False
        assert self._live is not None
        session = _CountedSession(self._channels, self._live, self._channel_closed)
        return session

    async def _decide_forward(self, action: str, host: str, port: int) -> tuple[bool, str]:
        live = self._live
        if live is None or live.closing:
            return False, "the session is being ended"
        decision = await decide(
            self._authz,
            action,
            live.principal,
            source_ip=live.login.client_ip,
            auth_method=live.login.method,
            mfa=live.login.mfa,
            session_id=live.session_id,
            extra={"host": host, "port": port},
        )
        if not live.still_open():
            return False, "the session is being ended"
        if decision.allow and len(live.forwards) < _MAX_TRACKED_FORWARDS:
            live.forwards.add((action, host, port))
        return decision.allow, "; ".join(decision.reasons) or "not allowed by policy"

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> Awaitable[Any]:
        """``ssh -L`` / ``ssh -W`` / ProxyJump: decided as ``ssh.direct-tcpip``; a deny refuses
        the channel with the reason."""
        return self._forward(dest_host, dest_port)

    async def _forward(self, dest_host: str, dest_port: int) -> Any:
        """A direct-tcpip channel holds one of the connection's ``max_channels`` slots until it
        closes, as a session channel does."""
        if not self._may_open_channel():
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_RESOURCE_SHORTAGE, "too many channels on this connection"
            )
        try:
            allowed, why = await self._decide_forward("ssh.direct-tcpip", dest_host, dest_port)
            if not allowed:
                raise asyncssh.ChannelOpenError(
                    asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, f"ssh.direct-tcpip denied: {why}"
                )
            assert self._live is not None
            assert self._conn is not None
            backend = self._channels.backends.get(self._live.principal.workspace.backend)
            if getattr(backend, "forwards_from_workspace", False):
                forwarder = await self._forward_inside(backend, dest_host, dest_port)
            else:
                address = await self._resolve_forward(dest_host, dest_port)
                forwarder = await self._conn.forward_connection(address, dest_port)
        except BaseException:
            self._channel_closed()
            raise
        lost = forwarder.connection_lost
        released = False

        def connection_lost(exc: Exception | None) -> None:
            nonlocal released
            try:
                lost(exc)
            finally:
                if not released:
                    released = True
                    self._channel_closed()

        forwarder.connection_lost = connection_lost
        return forwarder

    async def _forward_inside(self, backend: Any, dest_host: str, dest_port: int) -> Any:
        """A forward that leaves from the workspace's own network namespace (the ``container``
        backend): ``127.0.0.1`` there is the workspace's loopback. The name is resolved here,
        once; link-local, unspecified and multicast addresses and the gateway host's own
        interface addresses stay refused."""
        assert self._live is not None
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                dest_host, dest_port, type=socket.SOCK_STREAM
            )
        except OSError as exc:
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_CONNECT_FAILED, f"cannot resolve {dest_host!r}: {exc.strerror}"
            ) from None
        address = str(infos[0][4][0])
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if not ip.is_loopback and _gateway_internal(address):
            _log.warning("forward_to_internal_refused", conn=self._flow.conn_id,
                         host=escape_peer(dest_host), address=address)  # fmt: skip
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                f"ssh.direct-tcpip denied: {dest_host} is an address of the gateway host",
            )
        live = self._live
        workspace = live.principal.workspace
        spec = SessionSpec(
            session_id=live.session_id,
            username=live.principal.username,
            workspace=workspace.name,
            workspace_config={**workspace.config, "owner": workspace.owner},
        )
        try:
            sock = await backend.open_forward(spec, address, dest_port)
        except (OSError, StockadeError) as exc:
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, str(exc)) from None
        _, peer = await asyncio.get_running_loop().create_connection(SSHForwarder, sock=sock)
        return SSHForwarder(peer)

    async def _resolve_forward(self, dest_host: str, dest_port: int) -> str:
        """The address to connect to, resolved once (no second lookup to rebind); loopback,
        link-local and unspecified addresses are refused unless ``forward_to_loopback``."""
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                dest_host, dest_port, type=socket.SOCK_STREAM
            )
        except OSError as exc:
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_CONNECT_FAILED, f"cannot resolve {dest_host!r}: {exc.strerror}"
            ) from None
        addresses = [str(info[4][0]) for info in infos]
        if not self._forward_to_loopback:
            internal = [a for a in addresses if _gateway_internal(a)]
            if internal:
                _log.warning("forward_to_internal_refused", conn=self._flow.conn_id,
                             host=escape_peer(dest_host), address=internal[0])  # fmt: skip
                raise asyncssh.ChannelOpenError(
                    asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                    f"ssh.direct-tcpip denied: {dest_host} is an address of the gateway host",
                )
        return addresses[0]

    async def server_requested(self, listen_host: str, listen_port: int) -> bool:
        """``ssh -R``: decided as ``ssh.tcpip-forward``; the listener may only bind the gateway
        host's loopback (as sshd's ``GatewayPorts no``), never a port below 1024 and never a
        port Stockade itself listens on."""
        if listen_host.strip().lower() not in _LOOPBACK_NAMES:
            _log.warning("remote_forward_refused", conn=self._flow.conn_id,
                         host=escape_peer(listen_host), why="not loopback")  # fmt: skip
            return False
        if 0 < listen_port < 1024 or listen_port in self._reserved_ports:
            _log.warning("remote_forward_refused", conn=self._flow.conn_id,
                         port=listen_port, why="privileged or reserved port")  # fmt: skip
            return False
        allowed, _why = await self._decide_forward("ssh.tcpip-forward", listen_host, listen_port)
        return allowed


class _CountedSession(ChannelSession):
    """A session channel that gives its slot back when it closes."""

    def __init__(self, services: ChannelServices, live: LiveConnection, closed: Any) -> None:
        super().__init__(services, live)
        self._on_closed = closed

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._on_closed()

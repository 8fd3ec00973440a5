"""The asyncssh ``SSHServer`` of one connection: thin hooks that hand questions to the gateway.

Every hook denies unless identity and policy say otherwise. Host-based and GSS authentication
are never offered; Unix-socket forwarding is refused (asyncssh's default). An X11 request
(``ssh -X``) is decided by policy as ``ssh.x11`` (the default bundle denies it); workspaces offer
no X11 display yet, so it is refused either way, and the session shows the reason on stderr.
"""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncssh

from stockade.core.logging import escape_peer, get_logger

from ._auth import ConnectionAuth
from ._policy import Policy
from ._transport import coalesce_writes

__all__ = ["GatewayServer"]

_log = get_logger("stockade.gateway.server")

_BAD_INPUT = {"invalid_username", "unknown_workspace"}


#: Why an X11 request that policy allowed is refused all the same.
X11_UNAVAILABLE = "no X11 display is available in workspaces"


class _SessionProcess(asyncssh.SSHServerProcess[bytes]):
    """A session whose ``sftp`` subsystem goes to the workspace, not to asyncssh's SFTP server,
    and whose X11 request is asked of policy (``decide_x11(screen) -> (allowed, why)``)."""

    def __init__(
        self,
        serve: Callable[[asyncssh.SSHServerProcess[bytes]], Awaitable[None]],
        decide_x11: Callable[[int], Awaitable[tuple[bool, str]]],
    ) -> None:
        super().__init__(serve, None, 0, False)
        self._decide_x11 = decide_x11
        self.x11_refusal: str | None = None
        """Why this session's X11 request was refused (shown on stderr when it starts)."""

    def connection_made(self, chan: Any) -> None:
        super().connection_made(chan)
        # asyncssh finds a channel's request handlers by name (``_process_<request>_request``);
        # its own x11-req handler refuses without asking anyone
        chan._process_x11_req_request = self._x11_requested

    def _x11_requested(self, packet: Any) -> None:
        packet.get_boolean()  # single connection
        packet.get_string()  # auth protocol
        packet.get_string()  # auth cookie
        screen = packet.get_uint32()
        packet.check_end()
        conn = self._conn
        assert conn is not None
        conn.create_task(self._answer_x11(screen))

    async def _answer_x11(self, screen: int) -> None:
        allowed, why = await self._decide_x11(screen)
        self.x11_refusal = X11_UNAVAILABLE if allowed else why
        # requests are answered in order: the shell or exec request waits for this answer
        self._chan._report_response(False)

    def subsystem_requested(self, subsystem: str) -> bool:
        return subsystem == "sftp"

    def session_started(self) -> None:
        # asyncssh's version sends "sftp" to its own SFTP server; every request goes to ours
        chan = self._chan
        stdin = asyncssh.SSHReader[bytes](self, chan)
        stdout = asyncssh.SSHWriter[bytes](self, chan)
        stderr = asyncssh.SSHWriter[bytes](self, chan, asyncssh.EXTENDED_DATA_STDERR)
        factory = self._session_factory
        conn = self._conn
        assert factory is not None
        assert conn is not None
        handler = factory(stdin, stdout, stderr)
        if inspect.isawaitable(handler):
            conn.create_task(handler, stdin.logger)


#: Listen addresses ``ssh -R`` may ask for.
_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def _gateway_internal(address: str) -> bool:
    """True for addresses that reach the gateway host itself or its link."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback or ip.is_link_local or ip.is_unspecified or ip.is_multicast


class GatewayServer(asyncssh.SSHServer):
    """Hooks of one SSH connection. ``auth`` decides credentials; ``run_session`` serves a
    session channel; ``policy`` decides forwarding requests."""

    def __init__(
        self,
        *,
        auth: ConnectionAuth,
        policy: Policy,
        run_session: Callable[[ConnectionAuth, Any], Awaitable[None]],
        max_channels: int,
        on_connection: Callable[[Any], None],
        forward_to_loopback: bool = False,
    ) -> None:
        self._auth = auth
        self._forward_to_loopback = forward_to_loopback
        self._policy = policy
        self._run_session = run_session
        self._max_channels = max_channels
        self._on_connection = on_connection
        self._conn: Any = None

    # -- connection ----------------------------------------------------------------------

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        """Called once the TCP connection is handed to asyncssh; remembers it."""
        self._conn = conn
        coalesce_writes(conn)
        self._on_connection(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        """Called once when the connection closes; a connection that never authenticated and
        had no credential rejected publishes its one failure event here."""
        auth = self._auth
        if exc is not None and not auth.authenticated:
            _log.info("connection_failed", conn=auth.conn_id, client=auth.client_ip, error=str(exc))
            if auth.close_reason is None and isinstance(exc, asyncssh.Error):
                auth.close_reason = "protocol_error"
        auth.connection_closed()

    def _disconnect(self, code: int, reason: str) -> None:
        if self._conn is not None:
            self._conn.disconnect(code, reason)

    # -- authentication ------------------------------------------------------------------

    async def begin_auth(self, username: str) -> bool:
        """A client names a user (``alice`` or ``alice+ws2``). Returns True: authentication is
        always required. A malformed username or an unknown workspace closes the connection
        after publishing one failure."""
        await self._auth.begin(username)
        if self._auth.problem in _BAD_INPUT:
            await self._auth.fail("none", self._auth.problem or "")
            self._disconnect(asyncssh.DISC_ILLEGAL_USER_NAME, "unknown or malformed target")
        return True

    def public_key_auth_supported(self) -> bool:
        """Public keys are offered unless a TOTP code must come first (``require_mfa``)."""
        return self._auth.offers_public_key()

    def password_auth_supported(self) -> bool:
        """Passwords are offered when enabled in settings (and after TOTP with MFA)."""
        return self._auth.offers_password()

    def kbdint_auth_supported(self) -> bool:
        """Keyboard-interactive is offered only for the TOTP step of ``require_mfa``."""
        return self._auth.offers_totp()

    async def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        """Is ``key`` one of the target user's keys, and may they connect? asyncssh calls this
        for the client's query and again for the signed request; asyncssh itself verifies the
        signature afterwards. False for anything unknown."""
        accepted = await self._auth.check_key(key.get_fingerprint("sha256"))
        self._check_failures()
        return accepted

    async def validate_password(self, username: str, password: str) -> bool:
        """Is ``password`` right for the target user, and does policy allow password login?"""
        accepted = await self._auth.check_password(password)
        self._check_failures()
        return accepted

    def get_kbdint_challenge(
        self, username: str, lang: str, submethods: str
    ) -> tuple[str, str, str, list[tuple[str, bool]]]:
        """The TOTP prompt (only reached when ``require_mfa`` offered keyboard-interactive)."""
        return ("Stockade", "Two-factor authentication", "", [("TOTP code: ", False)])

    async def validate_kbdint_response(self, username: str, responses: Sequence[str]) -> bool:
        """Checks the TOTP code. Always answers False: a right code unlocks the next method
        (public key or password), which completes the login."""
        code = responses[0] if len(responses) == 1 else ""
        await self._auth.check_totp(code)
        self._check_failures()
        return False

    def _check_failures(self) -> None:
        if self._auth.too_many_failures:
            self._disconnect(asyncssh.DISC_NO_MORE_AUTH_METHODS_AVAILABLE, "too many failures")

    async def auth_completed(self) -> None:
        """Authentication succeeded: publish ``stockade.auth.succeeded``."""
        await self._auth.succeeded()

    # -- channels ------------------------------------------------------------------------

    def _channels_full(self) -> bool:
        channels = getattr(self._conn, "_channels", {})
        return len(channels) >= self._max_channels

    def session_requested(self) -> asyncssh.SSHServerProcess[bytes] | bool:
        """A session channel; each request on it (shell, exec, sftp) is authorized when made.
        False (refused) beyond the per-connection channel limit."""
        if self._channels_full():
            return False
        auth = self._auth

        async def serve(process: asyncssh.SSHServerProcess[bytes]) -> None:
            await self._run_session(auth, process)

        async def decide_x11(screen: int) -> tuple[bool, str]:
            return await self._decide("ssh.x11", {"screen": screen})

        return _SessionProcess(serve, decide_x11)

    async def _decide(self, action: str, extra: dict[str, Any]) -> tuple[bool, str]:
        auth = self._auth
        if auth.user is None or auth.workspace is None:
            return False, "not authenticated"
        decision = await self._policy.decide(
            action,
            auth.user,
            workspace=auth.workspace,
            source_ip=auth.client_ip,
            auth_method=auth.method,
            mfa=auth.mfa_passed,
            extra=extra,
        )
        why = "; ".join(decision.reasons) or "not allowed by policy"
        return decision.allow, why

    async def _decide_forward(self, action: str, host: str, port: int) -> tuple[bool, str]:
        return await self._decide(action, {"host": host, "port": port})

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> Awaitable[Any]:
        """``ssh -L`` / ``ssh -W`` / ProxyJump: authorized as ``ssh.direct-tcpip``; a deny
        refuses the channel with the reason."""
        return self._forward(dest_host, dest_port)

    async def _forward(self, dest_host: str, dest_port: int) -> Any:
        if self._channels_full():
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_RESOURCE_SHORTAGE, "too many channels")
        allowed, why = await self._decide_forward("ssh.direct-tcpip", dest_host, dest_port)
        if not allowed:
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, f"ssh.direct-tcpip denied: {why}"
            )
        address = await self._resolve_forward(dest_host, dest_port)
        return await self._conn.forward_connection(address, dest_port)

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
                _log.warning(
                    "forward_to_internal_refused",
                    conn=self._auth.conn_id,
                    host=escape_peer(dest_host),
                    address=internal[0],
                )
                raise asyncssh.ChannelOpenError(
                    asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                    f"ssh.direct-tcpip denied: {dest_host} is an address of the gateway host",
                )
        return addresses[0]

    async def server_requested(self, listen_host: str, listen_port: int) -> bool:
        """``ssh -R``: authorized as ``ssh.tcpip-forward``; the listener may only bind the gateway
        host's loopback (as sshd's ``GatewayPorts no``), never a public address."""
        if listen_host.strip().lower() not in _LOOPBACK_NAMES:
            _log.warning(
                "remote_forward_refused", conn=self._auth.conn_id, host=escape_peer(listen_host)
            )
            return False
        allowed, _why = await self._decide_forward("ssh.tcpip-forward", listen_host, listen_port)
        return allowed

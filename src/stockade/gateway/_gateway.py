"""The Gateway: listeners, admission (deny-list, limits, PROXY header), host keys, lifecycle.

Accepting is ours, not asyncssh's: each TCP connection is checked against the deny-list and the
connection limits and (when configured) stripped of its PROXY header before a single SSH byte is
sent; only then is the socket handed to :func:`asyncssh.run_server`. Each gateway process has a
boot id: its sessions carry it, and at start the sessions an earlier boot left open (a crash) are
ended and their ``session.ended`` published. Revocations arrive on the bus
(``stockade.session.kill``, ``stockade.identity.changed``) and end the sessions they concern.
Failed authentications (SSH Shield's strikes) go to a :class:`FailureSink` when one is given (a
:class:`stockade.bus.FailureBatcher`: one bus message per batch, so a brute-force wave costs the
bus and the shield one message per batch instead of one per attempt), otherwise one
``stockade.auth.failed`` each. ``stop(grace)`` closes the listeners, lets sessions finish for
``grace`` seconds, then ends the rest with a message, records them as ended and flushes the
failures still batched.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import socket
import uuid
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Coroutine,
    Mapping,
    Sequence,
)
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import asyncssh

from stockade.authz import AuthzAPI
from stockade.core.errors import ConfigError, InvalidInput, StockadeError
from stockade.core.events import (
    STREAM_AUDIT,
    SUBJECT_SESSION_KILL,
    AuthFailed,
    EventPublisher,
    IdentityChanged,
    SessionEnded,
    SessionKill,
    SessionStarted,
)
from stockade.core.files import write_private
from stockade.core.logging import get_logger
from stockade.core.settings import GatewaySettings
from stockade.core.tasks import cancel_and_wait
from stockade.identity import IdentityAPI, SessionRequest
from stockade.workspace import SessionSocketOpener

from ._admission import Outcome, PreAuthLimits, Verdict
from ._heartbeat import HeartbeatLoop, default_gateway_id
from ._host_keys import load_host_key_files
from ._limits import Admission, ConnectionLimits
from ._live import LiveConnection, LiveRegistry
from ._login import Login, LoginFlow, LoginServices
from ._ports import DenyList
from ._proxy_protocol import read_header
from ._server import GatewayServer
from ._session import ChannelServices
from .backends import WorkspaceBackend
from .backends.local import HomeHook, LocalBackend
from .backends.ssh import SshBackend

__all__ = [
    "ALGORITHMS",
    "EventSource",
    "FailureSink",
    "Gateway",
    "check_host_key_files",
    "load_or_create_key",
    "upstream_public_key",
]

_log = get_logger("stockade.gateway")

#: Modern algorithms only: no NIST-curve key exchange, no SHA-1, no 2048-bit DH group, no CBC,
#: MACs only encrypt-then-MAC. The post-quantum hybrid comes first; OpenSSH 9.2 clients pick
#: curve25519. User keys of every supported type (ECDSA and FIDO ``sk-`` included) still work.
ALGORITHMS: dict[str, list[str]] = {
    "kex_algs": [
        "mlkem768x25519-sha256",
        "curve25519-sha256",
        "curve25519-sha256@libssh.org",
        "diffie-hellman-group16-sha512",
        "diffie-hellman-group18-sha512",
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

_ED25519_HOST_KEY = ("ssh_host_ed25519_key", "ssh-ed25519")
_ECDSA_HOST_KEY = ("ssh_host_ecdsa_key", "ecdsa-sha2-nistp256")
#: What the users of sessions still open when the gateway stops read on stderr.
STOP_MESSAGE = "the gateway is shutting down"


class EventSource(Protocol):
    """Bus subscriptions the gateway listens to (``stockade.bus.Bus`` satisfies it)."""

    async def subscribe(
        self, subject: str, callback: Callable[[str, bytes], Awaitable[None]]
    ) -> Callable[[], Awaitable[None]]:
        """Call ``callback(subject, data)`` for each message; returns an unsubscribe coroutine."""
        ...


class ReplayableEvents(EventSource, Protocol):
    """An :class:`EventSource` that also says when its subscriptions may have missed messages
    (``epoch``, see :attr:`stockade.bus.Bus.epoch`) and reads what a stream stored meanwhile
    (``stockade.bus.Bus`` satisfies it)."""

    @property
    def epoch(self) -> int: ...

    async def last_sequence(self, stream: str, subject: str | None = None) -> int: ...

    def read_stream(
        self,
        stream: str,
        subject: str,
        *,
        since: datetime | None = ...,
        after_seq: int | None = ...,
        until_seq: int,
        idle: float = ...,
    ) -> AsyncIterator[Any]: ...


#: Seconds between looks at the bus's epoch (a reconnect means kills may have been missed)...
_EPOCH_POLL = 0.25
#: ...how many looks between reads of the kills stored, reconnect or not...
_CHECK_EVERY = 8
#: ...and how far before the gateway's start the first read begins when the stream's last
#: sequence was unknown then.
_REPLAY_MARGIN = timedelta(seconds=2)


class FailureSink(Protocol):
    """Where the gateway's failed authentications go in batches (``stockade.bus.FailureBatcher``
    satisfies it)."""

    def add(self, failure: AuthFailed) -> None:
        """Queue ``failure`` for publishing; never waits. May raise a StockadeError (closed)."""
        ...

    async def aclose(self, *, seconds: float = 10.0) -> None:
        """Publish what is queued (waiting up to ``seconds`` for the bus), then stop."""
        ...


class ReliableSink(Protocol):
    """Where the gateway's ``stockade.session.ended`` events go (``stockade.bus.ReliablePublisher``
    satisfies it): queued at once, retried until the bus stores them."""

    async def publish(self, event: SessionEnded) -> Any:
        """Queue ``event``; never waits for the bus. May raise a StockadeError (closed)."""
        ...

    async def aclose(self, *, seconds: float = 10.0) -> None:
        """Publish what is queued (waiting up to ``seconds`` for the bus), then stop."""
        ...


def load_or_create_key(path: Path, alg: str) -> asyncssh.SSHKey:
    """Load a private key, generating it (mode 0600) when missing."""
    if path.exists():
        return asyncssh.read_private_key(str(path))
    key = asyncssh.generate_private_key(alg)
    write_private(path, key.export_private_key())
    write_private(path.with_name(path.name + ".pub"), key.export_public_key(), mode=0o644)
    return key


def check_host_key_files(settings: GatewaySettings) -> None:
    """Raise what :meth:`Gateway.start` would for an unusable ``gateway.host_key_files`` entry
    (:class:`InvalidInput` naming the file), so a process can refuse before starting anything."""
    load_host_key_files(settings.host_key_files, signature_algs=ALGORITHMS["signature_algs"])


def upstream_public_key(data_dir: Path) -> str:
    """The key (OpenSSH format) the gateway presents to ``ssh`` backends' upstream sshd."""
    key = load_or_create_key(data_dir / "gateway" / "upstream_ed25519_key", "ssh-ed25519")
    return str(key.export_public_key().decode().strip())


class Gateway:
    """Stockade's SSH gateway. Construct, ``await start()``, later ``await stop(grace)``.

    ``identity`` and ``authz`` are the in-process services or their gRPC clients (anything
    satisfying :class:`~stockade.identity.IdentityAPI` / :class:`~stockade.authz.AuthzAPI`);
    ``publisher`` is the bus; ``events`` (the bus too) delivers kills and identity changes;
    ``deny_list`` is SSH Shield's, asked at every accept. ``backends`` replaces the default
    workspace backends (``local``, ``ssh``); ``extra_backends`` are added to them (``container``,
    built by the composition root); ``sandbox_network`` gives each ``local`` workspace its own
    network namespace (``workspace.sandbox_network``), and ``session_sockets`` (the in-process
    broker's ``open_session_socket``) gives each of its sessions its own broker socket, which
    its credential helpers use instead of ``STOCKADE_TOKEN`` over TCP (out of reach from such a
    namespace). ``reserved_ports`` are Stockade's own
    listening ports, which ``ssh -R`` may never take. ``failures`` receives every failed
    authentication (see :class:`FailureSink`; the gateway closes it, flushing, when it stops);
    without it each failure is published on its own through ``publisher``. ``session_ends``
    receives every ``stockade.session.ended`` (see :class:`ReliableSink`; closed, flushing, when
    the gateway stops): the broker stops serving a session's token from memory when it arrives,
    and after a workspace-wide kill nothing else tells it, so a lost one would leave a killed
    session's token usable for the broker's ``liveness_max_age``; without it each is published
    once through ``publisher``. State (host keys,
    the upstream client key, known upstream host keys, workspace homes, recordings) lives under
    ``data_dir``.
    """

    def __init__(
        self,
        *,
        settings: GatewaySettings,
        identity: IdentityAPI,
        authz: AuthzAPI,
        publisher: EventPublisher,
        events: EventSource | None = None,
        deny_list: DenyList | None = None,
        data_dir: Path,
        prepare_home: HomeHook | None = None,
        backends: dict[str, WorkspaceBackend] | None = None,
        reserved_ports: Collection[int] = (),
        extra_backends: Mapping[str, WorkspaceBackend] | None = None,
        failures: FailureSink | None = None,
        sandbox_network: bool = False,
        session_sockets: SessionSocketOpener | None = None,
        session_ends: ReliableSink | None = None,
    ) -> None:
        self.settings = settings
        self._sandbox_network = sandbox_network
        self._session_sockets = session_sockets
        self.data_dir = data_dir
        self.gateway_id = settings.gateway_id or default_gateway_id(data_dir)
        self.boot_id = uuid.uuid4().hex
        self.heartbeat = HeartbeatLoop(
            identity,
            gateway_id=self.gateway_id,
            boot_id=lambda: self.boot_id,
            interval=settings.heartbeat_interval,
            timeout=settings.heartbeat_timeout,
            on_dead=self._declared_dead,
        )
        self._identity = identity
        self._authz = authz
        self._publisher = publisher
        self._events = events
        self._deny_list = deny_list
        self._prepare_home = prepare_home
        self._backends = backends
        self._extra_backends = dict(extra_backends or {})
        self._reserved = set(reserved_ports)
        self._failures = failures
        self._session_ends = session_ends
        self._limits = ConnectionLimits(
            max_total=settings.max_connections, max_per_source=settings.max_connections_per_source
        )
        self._preauth = PreAuthLimits(settings=settings.preauth)
        self._state_dir = data_dir / "gateway"
        self._listeners: list[socket.socket] = []
        self._accept_tasks: list[asyncio.Task[None]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._catch_up: asyncio.Task[None] | None = None
        self._conns: set[asyncssh.SSHServerConnection] = set()
        self._live = LiveRegistry(authz, self._background)
        self._unsubscribe: list[Callable[[], Awaitable[None]]] = []
        self._ids = itertools.count(1)
        self._options: asyncssh.SSHServerConnectionOptions | None = None
        self._login_services: LoginServices | None = None
        self._channel_services: ChannelServices | None = None
        self._stopping = False

    # -- public surface ------------------------------------------------------------------

    @property
    def listening(self) -> list[tuple[str, int]]:
        """The (host, port) pairs accepting connections; empty before start and after stop."""
        return [sock.getsockname()[:2] for sock in self._listeners]

    @property
    def live_sessions(self) -> list[str]:
        """Ids of the sessions (logged-in connections) open now."""
        return self._live.session_ids

    @property
    def upstream_public_key(self) -> str:
        """The key (OpenSSH format) the gateway presents to ``ssh`` backends' upstream sshd."""
        return upstream_public_key(self.data_dir)

    async def start(self) -> None:
        """Load host keys (``host_key_files``, else those generated in the data directory), end
        what an earlier boot left open, subscribe to revocations and listen on ``host`` (and
        ``extra_hosts``)."""
        if self._listeners:
            raise RuntimeError("gateway already started")
        settings = self.settings
        host_keys = load_host_key_files(  # before anything else: a bad file changes nothing
            settings.host_key_files, signature_algs=ALGORITHMS["signature_algs"]
        )
        await self._end_stale_sessions()
        await self.heartbeat.beat()  # registered before the first session can open
        if host_keys and settings.ecdsa_host_key:
            _log.warning("ecdsa_host_key_ignored", reason="gateway.host_key_files is set")
        if not host_keys:
            host_keys.append(
                load_or_create_key(self._state_dir / _ED25519_HOST_KEY[0], "ssh-ed25519")
            )
        if settings.ecdsa_host_key and not settings.host_key_files:
            host_keys.append(
                load_or_create_key(self._state_dir / _ECDSA_HOST_KEY[0], _ECDSA_HOST_KEY[1])
            )
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
        self._login_services = LoginServices(
            identity=self._identity,
            authz=self._authz,
            publisher=self._publisher,
            report_failure=self._report_failure,
            gateway_id=self.gateway_id,
            max_attempts=settings.max_auth_failures,
            password_auth=settings.password_auth,
            background=self._background,
        )
        self._channel_services = ChannelServices(
            authz=self._authz,
            publisher=self._publisher,
            backends={**(self._backends or self._default_backends()), **self._extra_backends},
            recordings=self.data_dir / "recordings",
            recording_max_bytes=settings.recording_max_bytes,
            api_url=settings.api_url or "https://127.0.0.1:8443",
            accept_env=tuple(settings.accept_env),
            background=self._background,
        )
        await self._subscribe()
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
        self._reserved.update(p for _h, p in self.listening)
        for sock in self._listeners:
            self._accept_tasks.append(asyncio.create_task(self._accept_loop(sock)))
        self.heartbeat.start()
        _log.info("gateway_listening", addresses=self.listening, gateway_id=self.gateway_id,
                  boot_id=self.boot_id)  # fmt: skip

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting, give sessions ``grace`` seconds (default ``stop_grace``), then end
        the rest with a message, record them as ended and drop every connection. Returns
        within ``grace`` plus a few seconds whatever the sessions do."""
        grace = self.settings.stop_grace if grace is None else grace
        self._stopping = True
        await cancel_and_wait(self._catch_up, what="kill catch-up")
        self._catch_up = None
        for task in self._accept_tasks:
            task.cancel()
        self._close_listeners()
        self._accept_tasks.clear()
        for unsubscribe in self._unsubscribe:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(unsubscribe(), 2)
        self._unsubscribe.clear()
        live = self._live.values()
        _log.info("gateway_stopping", sessions=len(live), grace=grace)
        if live and grace > 0:
            waiters = [asyncio.ensure_future(session.ended.wait()) for session in live]
            await asyncio.wait(waiters, timeout=grace)
            for waiter in waiters:
                waiter.cancel()
        ending = [session.terminate("gateway_stopped", STOP_MESSAGE) for session in live]
        if ending:
            await asyncio.wait([asyncio.ensure_future(e) for e in ending], timeout=2)
        for conn in list(self._conns):
            with contextlib.suppress(Exception):
                conn.disconnect(asyncssh.DISC_BY_APPLICATION, STOP_MESSAGE)
        # every session recorded as ended before the tasks are cancelled
        ended = [asyncio.ensure_future(s.ended.wait()) for s in {*live, *self._live.values()}]
        if ended:
            await asyncio.wait(ended, timeout=3)
            for waiter in ended:
                waiter.cancel()
        # the connections are closed: their tasks end by themselves; cancelling one in the middle
        # of a store transaction would leave its database connection to the garbage collector
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=1)
        if self._failures is not None:  # the strikes of the connections just closed included
            await self._failures.aclose(seconds=5)
        if self._session_ends is not None:  # the ends of the sessions just closed included
            await self._session_ends.aclose(seconds=5)
        await self.heartbeat.stop()
        _log.info("gateway_stopped")

    # -- internals -----------------------------------------------------------------------

    def _default_backends(self) -> dict[str, WorkspaceBackend]:
        settings = self.settings
        backends: dict[str, WorkspaceBackend] = {
            "local": LocalBackend(
                root=self.data_dir / "workspaces",
                data_dir=self.data_dir,
                sandbox=settings.sandbox,
                shell=settings.shell,
                prepare_home=self._prepare_home,
                network=self._sandbox_network,
                sockets=self._session_sockets,
            ),
        }
        upstream = SshBackend(
            client_key=load_or_create_key(self._state_dir / "upstream_ed25519_key", "ssh-ed25519"),
            known_hosts=self._state_dir / "upstream_known_hosts.json",
            connect_timeout=settings.upstream_connect_timeout,
        )
        backends["ssh"] = backends["sshd"] = upstream
        return backends

    async def _end_stale_sessions(self) -> None:
        try:
            stale = await self._identity.end_stale_sessions(self.gateway_id, self.boot_id)
        except StockadeError as exc:
            _log.error("stale_sessions_not_ended", error=str(exc))
            raise
        for info in stale:
            await self._publish_end(
                SessionEnded(session_id=info.session_id, username=info.username, reason="crashed")
            )

    async def _declared_dead(self) -> None:
        """Our heartbeat went stale and another gateway ended our sessions in the registry:
        close them here too (their tokens no longer verify) and carry on as a new boot."""
        live = self._live.values()
        self.boot_id = uuid.uuid4().hex
        ending = [s.terminate("gateway_lost", "this gateway lost its registry") for s in live]
        if ending:
            await asyncio.wait([asyncio.ensure_future(e) for e in ending], timeout=2)

    async def _subscribe(self) -> None:
        if self._events is None:
            return
        live = self._live

        async def on_kill(_subject: str, data: bytes) -> None:
            try:
                event = SessionKill.from_bytes(data)
            except InvalidInput as exc:
                _log.warning("bad_kill_event", error=str(exc))
                return
            await self._apply_kill(event)

        async def on_identity(_subject: str, data: bytes) -> None:
            try:
                event = IdentityChanged.from_bytes(data)
            except InvalidInput as exc:
                _log.warning("bad_identity_event", error=str(exc))
                return
            await live.identity_changed(event)

        self._unsubscribe.append(await self._events.subscribe(SessionKill.subject, on_kill))
        self._unsubscribe.append(await self._events.subscribe(IdentityChanged.subject, on_identity))
        events = self._events
        if hasattr(events, "epoch") and hasattr(events, "read_stream"):
            self._catch_up = asyncio.create_task(
                self._catch_up_kills(events),  # type: ignore[arg-type]
                name="gateway-kill-catch-up",
            )

    async def _catch_up_kills(self, events: ReplayableEvents) -> None:
        """Kills published while the bus connection was down never reach the subscription
        (core NATS): a Worktrace or administrator kill would be lost, the session left running.
        After every reconnect, and every few seconds besides (a message dropped by a slow
        subscription), read every kill the audit stream stored after the last one read here
        and apply it; a kill replayed spares the connections that logged in after it was
        published, and applying one twice ends nothing twice.

        By the stream's sequence, not by time: a link that goes silent without closing (a
        partition, no RST) still looks connected until the client's pings time out (minutes),
        so "since shortly before it was last seen up" began after the kills it lost."""
        started = datetime.now(UTC) - _REPLAY_MARGIN
        read: int | None = None
        with contextlib.suppress(StockadeError):
            read = await events.last_sequence(STREAM_AUDIT, SUBJECT_SESSION_KILL)
        epoch = events.epoch
        looks = 0
        while True:
            await asyncio.sleep(_EPOCH_POLL)
            now = events.epoch
            looks += 1
            if now < 0:  # disconnected: wait for the reconnect
                epoch = -1
                continue
            if now == epoch and looks < _CHECK_EVERY:
                continue
            looks = 0
            try:
                read, replayed = await self._replay_kills(events, read, started)
            except StockadeError as exc:  # the stream is not there yet: try at the next look
                _log.warning("kill_catch_up_failed", error=str(exc))
                continue
            except Exception as exc:  # the watcher must outlive any surprise
                _log.error("kill_catch_up_crashed", error=repr(exc))
                continue
            if now != epoch or replayed:
                _log.info("kill_catch_up", after_seq=read, kills=replayed)
            epoch = now

    async def _replay_kills(
        self, events: ReplayableEvents, after: int | None, since: datetime
    ) -> tuple[int, int]:
        """Apply the kills stored after sequence ``after`` (None: since ``since``, the
        gateway's start); returns the last sequence read and how many were applied."""
        last = await events.last_sequence(STREAM_AUDIT, SUBJECT_SESSION_KILL)
        if after is not None and last < after:  # the stream was recreated: read it all
            after = 0
        if last == 0 or last == after:
            return last, 0
        count = 0
        async for delivery in events.read_stream(
            STREAM_AUDIT,
            SUBJECT_SESSION_KILL,
            since=since if after is None else None,
            after_seq=after,
            until_seq=last,
            idle=1.0,
        ):
            try:
                event = SessionKill.from_bytes(delivery.data)
            except InvalidInput as exc:
                _log.warning("bad_kill_event", error=str(exc))
                continue
            count += 1
            # the later of the killer's clock and the server's: a killer whose clock is behind
            # spares nobody who was logged in when the kill was stored (fail closed)
            cutoff = max(event.at, delivery.timestamp)
            await self._apply_kill(event, logged_in_before=cutoff)
        return last, count

    async def _apply_kill(
        self, event: SessionKill, *, logged_in_before: datetime | None = None
    ) -> None:
        """End what ``event`` names here; a workspace removal also drops the workspace's
        network namespace once none of its sessions is left here (kept, a re-created
        workspace of that name would start in the old one, next to whatever the old
        sessions left listening)."""
        await self._live.kill(event, logged_in_before=logged_in_before)
        workspace = event.removed_workspace
        if workspace is None:
            return
        if self._live.in_workspace(workspace):  # a later login (a replay spares it): keep
            _log.info("workspace_netns_kept", workspace=workspace, reason="live sessions")
            return
        services = self._channel_services
        backends = services.backends.values() if services is not None else ()
        for backend in {id(b): b for b in backends}.values():
            remove = getattr(backend, "remove_netns", None)
            if remove is None:
                continue
            try:
                await asyncio.to_thread(remove, workspace)
            except Exception as exc:  # a namespace left behind must not stop the kill loop
                _log.error("workspace_netns_not_removed", workspace=workspace, error=repr(exc))

    def _background(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _log.error("gateway_task_failed", error=repr(task.exception()))

    async def _publish(self, event: Any) -> None:
        try:
            await self._publisher.publish(event)
        except StockadeError as exc:
            _log.warning("event_not_published", error=str(exc))

    async def _publish_end(self, event: SessionEnded) -> None:
        """A session's end: through ``session_ends`` (retried until stored) when there is one."""
        if self._session_ends is None:
            await self._publish(event)
            return
        try:
            await self._session_ends.publish(event)
        except StockadeError as exc:  # closed: the gateway is past its stop
            _log.error("session_end_not_published", session=event.session_id, error=str(exc))

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

    async def _report_failure(self, failure: AuthFailed) -> None:
        """One failed authentication: batched when the gateway has a sink, else published."""
        if self._failures is None:
            await self._publish(failure)
            return
        try:
            self._failures.add(failure)
        except StockadeError as exc:
            _log.warning("event_not_published", error=str(exc))

    async def _publish_failure(self, ip: str, port: int, reason: str) -> None:
        await self._report_failure(
            AuthFailed(client_ip=ip, client_port=port, username="", method="none",
                       reason=reason, gateway_id=self.gateway_id)
        )  # fmt: skip

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
        verdict = self._preauth.admit(ip)
        if verdict is not Verdict.ADMITTED:
            # refused before any SSH byte, at the cost of a close: a flood must not buy a log
            # line and a bus round trip per connection. The shield hears of each source once,
            # when its penalty becomes enforced ("penalized").
            _log.debug("refused_preauth", conn=conn_id, client=ip, reason=verdict.reason)
            sock.close()
            return
        admission = self._limits.admit(ip)
        if admission is not Admission.ADMITTED:
            self._preauth.closed(ip, Outcome.NOAUTH)
            _log.info("refused_limit", conn=conn_id, client=ip, reason=admission.value)
            sock.close()
            await self._publish_failure(ip, port, admission.value)
            return
        outcome = Outcome.CRASH
        authenticated: list[bool] = []
        try:
            outcome = await self._run_ssh(sock, conn_id, ip, port, authenticated)
        finally:
            if authenticated:  # cancelled (stop) or failed after the login: still authenticated
                outcome = Outcome.AUTHENTICATED
            self._limits.release(ip)
            penalty = self._preauth.closed(ip, outcome)
            if penalty is not None:
                _log.info("source_penalized", source=penalty.source, outcome=outcome.value,
                          seconds=round(penalty.seconds, 1))  # fmt: skip
                await self._publish_failure(ip, port, "penalized")

    async def _logged_in(self, live: LiveConnection) -> None:
        """A connection logged in: one registry session (row and token), published."""
        login, conn = live.login, live.conn
        request = SessionRequest(
            client_ip=login.client_ip,
            client_port=login.client_port,
            gateway_id=self.gateway_id,
            boot_id=self.boot_id,
            ttl=_token_ttl(login),
            recording=(
                str(self.data_dir / "recordings" / "{session_id}.cast")
                if login.obligations.record_session
                else None
            ),
        )
        try:
            opened = await self._identity.open_session(login.principal, request)
        except StockadeError as exc:
            _log.warning("session_not_started", conn=login.conn_id, error=str(exc))
            live.end_reason = "not_started"
            live.opened.set_result(False)
            live.ended.set()
            conn.disconnect(asyncssh.DISC_BY_APPLICATION, "the session could not be started")
            return
        live.session_id, live.token = opened.session_id, opened.token
        self._live.add(live)
        limit = login.obligations.max_session_seconds
        if limit:
            # the limit is the session's (the connection's), not each channel's: a multiplexed
            # connection opening a new channel after the last one hit it must end too
            message = f"session time limit of {limit} seconds reached"
            live.deadline = asyncio.get_running_loop().call_later(
                limit,
                lambda: self._background(live.terminate("max_session_seconds", message)),
            )
        live.opened.set_result(True)
        await self._publish(
            SessionStarted(session_id=live.session_id, username=login.username,
                           workspace=login.workspace, client_ip=login.client_ip)
        )  # fmt: skip
        _log.info("session_started", conn=login.conn_id, session=live.session_id,
                  user=login.username, workspace=login.workspace)  # fmt: skip
        if self._stopping:
            self._background(live.terminate("gateway_stopped", STOP_MESSAGE))

    async def _session_closed(self, live: LiveConnection) -> None:
        """The connection of ``live`` closed: the registry row ends, ``session.ended`` goes out.
        ``live`` leaves the registry only once its end is recorded, so ``stop()`` waits for it."""
        if live.deadline is not None:
            live.deadline.cancel()
        reason = live.end_reason or "exited"
        try:
            await self._identity.end_session(
                live.session_id,
                exit_status=live.exit_status,
                bytes_in=live.bytes_in,
                bytes_out=live.bytes_out,
                recording=live.recording or "",  # "": nothing was recorded after all
                reason=reason,
            )
        except StockadeError as exc:
            _log.warning("session_not_ended", session=live.session_id, error=str(exc))
        finally:
            self._live.discard(live)
            live.ended.set()
        await self._publish_end(
            SessionEnded(session_id=live.session_id, username=live.login.username,
                         exit_status=live.exit_status, reason=reason)
        )  # fmt: skip
        _log.info("session_ended", session=live.session_id, reason=reason)

    async def _run_ssh(
        self, sock: socket.socket, conn_id: int, ip: str, port: int, authenticated: list[bool]
    ) -> Outcome:
        """Serve one admitted connection; how it ended, for the pre-auth penalties
        (``authenticated`` gets an entry once it logged in, even if this is cancelled later)."""
        assert self._login_services is not None
        assert self._channel_services is not None
        flow = LoginFlow(self._login_services, conn_id, ip, port)
        holder: list[asyncssh.SSHServerConnection] = []
        lives: list[LiveConnection] = []

        def on_connection(conn: asyncssh.SSHServerConnection) -> None:
            holder.append(conn)
            self._conns.add(conn)

        async def on_login(live: LiveConnection) -> None:
            lives.append(live)
            self._preauth.authenticated(ip)
            authenticated.append(True)
            await self._logged_in(live)

        def factory() -> GatewayServer:
            assert self._channel_services is not None
            return GatewayServer(
                flow=flow,
                authz=self._authz,
                channels=self._channel_services,
                on_login=on_login,
                on_connection=on_connection,
                max_channels=self.settings.max_channels_per_connection,
                reserved_ports=self._reserved,
                forward_to_loopback=self.settings.forward_to_loopback,
            )

        loop = asyncio.get_running_loop()

        def handshake_expired() -> None:
            if not flow.began and holder:
                flow.close_reason = "handshake_timeout"
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
            if holder:
                self._conns.discard(holder[0])
                with contextlib.suppress(Exception):
                    holder[0].abort()
            with contextlib.suppress(OSError):
                sock.close()
            for live in lives:
                if live.session_id:
                    await self._session_closed(live)
        return _outcome(flow, authenticated=bool(lives))


def _outcome(flow: LoginFlow, *, authenticated: bool) -> Outcome:
    """How a connection ended, in PerSourcePenalties' terms."""
    if authenticated:
        return Outcome.AUTHENTICATED
    if flow.close_reason == "handshake_timeout" or flow.timed_out:
        return Outcome.GRACE_EXCEEDED
    if flow.close_reason == "protocol_error":
        return Outcome.CRASH
    if flow.failed_credential:
        return Outcome.AUTHFAIL
    return Outcome.NOAUTH


def _token_ttl(login: Login) -> int:
    """The session token lives as long as the session may (it is revoked when it ends)."""
    limit = login.obligations.max_session_seconds
    return min(limit, 86400) if limit else 86400


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

"""The composition root: ``stockade up`` builds every service here, in one process.

Each service receives its collaborators through its constructor (docs/architecture.md); this
module is the only place that knows which concrete objects those are. Start order is store, bus,
identity, authz, internal API; stop order is the reverse, and a failure while starting stops
whatever had already started.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path

from stockade.audit import AuditSearch, AuditService
from stockade.authz import Authorizer
from stockade.broker import BrokerServer, KubeCluster, SessionSocket, workspace_config
from stockade.bus import Bus, EmbeddedNats
from stockade.core import Settings, get_logger
from stockade.gateway import ContainerBackend, Gateway, RecordingSweeper
from stockade.helpers import static_helper
from stockade.identity import IdentityService, KeyRing
from stockade.rpc import RpcServer
from stockade.shield import Shield
from stockade.store import Store
from stockade.tls import CertificateFiles, DevCA
from stockade.workspace import PodmanRuntime, UidAllocator

__all__ = ["Listener", "Runtime", "keyring_for", "prepare_data_dir"]

log = get_logger("stockade.up")


@dataclass(frozen=True)
class Listener:
    """One thing ``stockade up`` serves, for the start-up banner."""

    what: str
    where: str


def prepare_data_dir(settings: Settings) -> Path:
    """Create the data dir (0700) and make every file this process creates private (umask 077):
    database, keys, recordings and sockets hold secrets or audit data."""
    os.umask(0o077)
    data_dir = settings.data_dir
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(data_dir, 0o700)
    return data_dir


def keyring_for(settings: Settings) -> KeyRing:
    """The JWT signing keys in the data dir."""
    return KeyRing(
        settings.data_dir / "keys",
        algorithm=settings.identity.algorithm,
        leeway=settings.identity.leeway,
    )


@dataclass
class Runtime:
    """Every service of ``stockade up``, started and stopped together."""

    settings: Settings
    store: Store | None = None
    nats: EmbeddedNats | None = None
    bus: Bus | None = None
    identity: IdentityService | None = None
    authorizer: Authorizer | None = None
    rpc: RpcServer | None = None
    shield: Shield | None = None
    gateway: Gateway | None = None
    broker: BrokerServer | None = None
    audit: AuditService | None = None
    sweeper: RecordingSweeper | None = None
    listeners: list[Listener] = field(default_factory=list)
    _stack: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        settings = self.settings
        data_dir = prepare_data_dir(settings)
        stack = self._stack

        self.store = Store(settings.database_url, echo=settings.store.echo)
        stack.push_async_callback(self.store.close)
        await self.store.migrate()
        self.listeners.append(Listener("store", _without_userinfo(settings.database_url)))

        url = settings.bus.url
        if url is None:
            self.nats = EmbeddedNats(
                data_dir, connect_timeout=settings.bus.connect_timeout, auth=True
            )
            stack.push_async_callback(self.nats.stop)
            url = await self.nats.start()
            self.listeners.append(Listener("event bus (embedded nats-server)", url))
        else:
            self.listeners.append(Listener("event bus (external)", _without_userinfo(url)))
        self.bus = await Bus.connect(
            url,
            name="stockade",
            connect_timeout=settings.bus.connect_timeout,
            token=self.nats.token if self.nats else None,
        )
        stack.push_async_callback(self.bus.close)
        await self.bus.ensure_streams()

        # --- audit store (issue 11): every event of the bus, chained and signed ---
        if settings.audit.enabled:
            self.audit = AuditService(
                bus=self.bus, store=self.store, settings=settings.audit, data_dir=data_dir
            )
            stack.push_async_callback(self.audit.stop)
            await self.audit.start()
            self.listeners.append(Listener("audit store", f"signed heads: {self.audit.heads_file}"))
        if settings.gateway.recording_keep is not None:
            self.sweeper = RecordingSweeper(
                data_dir / "recordings", settings.gateway.recording_keep, publisher=self.bus
            )
            stack.push_async_callback(self.sweeper.stop)
            await self.sweeper.start()
        # --- end audit store ---

        self.identity = IdentityService(
            store=self.store,
            settings=settings.identity,
            keyring=keyring_for(settings),
            publisher=self.bus,
        )
        self.authorizer = Authorizer(settings=settings.authz, decision_sink=self.bus)
        stack.push_async_callback(self.authorizer.stop)
        await self.authorizer.start()

        ca = DevCA(data_dir / "tls")
        issued = ca.issue("api")
        self.rpc = RpcServer(
            identity=self.identity,
            authorizer=self.authorizer,
            tls=CertificateFiles(issued.cert, issued.key, issued.ca),
            host=settings.api.host,
            port=settings.api.port,
            admin_socket=settings.admin_socket,
        )
        stack.push_async_callback(self.rpc.stop)
        await self.rpc.start()
        self.listeners.append(
            Listener("internal API (gRPC, mutual TLS)", f"{settings.api.host}:{self.rpc.port}")
        )
        self.listeners.append(
            Listener("admin API (gRPC, unix socket 0600)", str(settings.admin_socket))
        )

        gateway_settings = settings.gateway
        if gateway_settings.port == 0:  # pick it now: nftables rules need the real port
            gateway_settings = gateway_settings.model_copy(
                update={"port": _free_port(gateway_settings.host)}
            )

        if settings.shield.enabled:
            self.shield = Shield(
                self.bus,
                settings.shield.model_copy(update={"nft_table": settings.nft_table}),
                ports=[gateway_settings.port],
                owner=settings.instance_id,
            )
            stack.push_async_callback(self.shield.stop)
            await self.shield.start()
            enforcers = ", ".join(["denylist", *(e.name for e in self.shield.enforcers)])
            self.listeners.append(Listener("SSH Shield", f"enforcers: {enforcers}"))

        self.broker = BrokerServer.from_settings(
            settings,
            identity=self.identity,
            authz=self.authorizer,
            publisher=self.bus,
            ca=ca,
            metrics=self.shield.metrics_text if self.shield else None,
            audit=AuditSearch(self.store),
        )
        stack.push_async_callback(self.broker.stop)
        await self.broker.start()
        self.listeners.append(Listener("credential broker (HTTPS)", self.broker.url))
        if settings.vault.addr is None:
            log.warning("no secrets backend configured; set VAULT_ADDR and VAULT_TOKEN")

        if gateway_settings.api_url is None:
            gateway_settings = gateway_settings.model_copy(update={"api_url": self.broker.url})

        if gateway_settings.enabled:
            container = ContainerBackend(
                data_dir=data_dir, runtime=self._podman_runtime, sockets=self._session_socket
            )
            stack.push_async_callback(container.close)
            self.gateway = Gateway(
                settings=gateway_settings,
                identity=self.identity,
                authz=self.authorizer,
                publisher=self.bus,
                events=self.bus,
                deny_list=self.shield.deny_list if self.shield else None,
                data_dir=data_dir,
                prepare_home=self._credential_helpers,
                reserved_ports=self._reserved_ports(),
                extra_backends={"container": container},
                sandbox_network=settings.workspace.sandbox_network,
            )
            stack.push_async_callback(self.gateway.stop)
            await self.gateway.start()
            for host, port in self.gateway.listening:
                shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                self.listeners.append(Listener("SSH gateway", shown))

    def _reserved_ports(self) -> set[int]:
        """Every port this process listens on: ``ssh -R`` may take none of them."""
        ports = set()
        for item in self.listeners:
            port = item.where.rstrip("/").rpartition(":")[2]
            if port.isdigit():
                ports.add(int(port))
        return ports

    def _podman_runtime(self) -> PodmanRuntime:
        """The Podman runtime of ``container`` workspaces (built at their first session)."""
        ws = self.settings.workspace
        data_dir = self.settings.data_dir
        return PodmanRuntime(
            data_dir=data_dir,
            uids=UidAllocator(
                data_dir / "workspace-uids.json", first=ws.uid_first, count=ws.uid_count
            ),
            idle_timeout=ws.idle_timeout,
            network=ws.podman_network,
            credential_helper=static_helper(),
        )

    async def _session_socket(
        self, session_id: str, token: str, path: Path, uid: int | None
    ) -> SessionSocket:
        assert self.broker is not None
        return await self.broker.open_session_socket(session_id, token, path, uid)

    def _credential_helpers(self, home: Path, uid: int, gid: int) -> None:
        """Point git, Docker and kubectl in a workspace home at the credential helpers."""
        assert self.broker is not None
        workspace_config(
            home,
            self.broker.url,
            self.broker.ca_path,
            clusters={
                c.name: KubeCluster(c.server, c.ca_file) for c in self.settings.broker.clusters
            },
            owner=(uid, gid),
            helper_python=_SYSTEM_PYTHON,
        )

    async def stop(self) -> None:
        await self._stack.aclose()


#: The interpreter sandboxed sessions run the credential helpers with: a system one, since the
#: sandbox user may not reach ours (a pyenv or venv under /root, say). The helpers need only the
#: standard library.
_SYSTEM_PYTHON = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin") or sys.executable


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _without_userinfo(url: str) -> str:
    """``url`` without ``user:password@``: the banner never prints a credential."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    host, slash, path = rest.partition("/")
    return f"{scheme}://{host.rpartition('@')[2]}{slash}{path}"

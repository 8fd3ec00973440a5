"""The composition root: ``stockade up`` builds every service here, in one process, and
``stockade serve SERVICE`` builds one of them, reaching the others through their gRPC clients.

Each service receives its collaborators through its constructor (docs/architecture.md); this
module is the only place that knows which concrete objects those are. A collaborator that runs
in this process is the object itself; one that runs elsewhere is its client (``IdentityClient``,
``AuthzClient`` over mutual TLS to the address in ``peers``, ``BanSync`` for the deny-list): the
services see the same Protocols either way, and nothing inside them asks which. Start order is
store, bus, audit, identity, authz, internal API, shield, broker, gateway, worktrace; stop order
is the reverse, and a failure while starting stops whatever had already started.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import shutil
import socket
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from stockade.audit import AuditSearch, AuditService
from stockade.authz import Authorizer
from stockade.broker import BrokerServer, KubeCluster, SessionSocket, workspace_config
from stockade.bus import Bus, EmbeddedNats, FailureBatcher, ReliablePublisher
from stockade.console import LOGIN_BUCKET, PREFIX, OidcSignIn, Sessions, create_console
from stockade.core import ConfigError, InvalidInput, Settings, get_logger
from stockade.core.errors import BackendError
from stockade.core.files import write_private
from stockade.gateway import (
    ContainerBackend,
    Gateway,
    RecordingSweeper,
    check_host_key_files,
    default_gateway_id,
)
from stockade.helpers import static_helper
from stockade.identity import IdentityAPI, IdentityService
from stockade.rpc import (
    AuthzClient,
    IdentityClient,
    RpcServer,
    ServiceAuthInterceptor,
    mtls_channel,
)
from stockade.shield import BanSync, DenyList, Shield
from stockade.store import Store
from stockade.tls import (
    GATEWAY_URI_PREFIX,
    CertificateFiles,
    CertificateRenewer,
    DevCA,
    OpenBaoPKISource,
    ProjectedToken,
    ServiceTokenVerifier,
    dns_names,
    gateway_ids,
    gateway_uri,
    vault_jwt_login,
)
from stockade.workspace import PodmanRuntime, UidAllocator

from ._datadir import keyring_for, prepare_data_dir
from ._worktrace import WorktraceRunner, start_worktrace

__all__ = ["SERVICES", "Listener", "Runtime", "keyring_for", "prepare_data_dir", "service_tls"]

#: What ``stockade serve`` can run on its own; ``stockade up`` runs all of them.
SERVICES: tuple[str, ...] = (
    "identity", "authz", "broker", "shield", "audit", "gateway", "worktrace",
)  # fmt: skip

log = get_logger("stockade.up")


@dataclass(frozen=True)
class Listener:
    """One thing ``stockade up`` serves, for the start-up banner."""

    what: str
    where: str


@dataclass
class Runtime:
    """The services of ``stockade up`` (``services`` unset: all of them) or of
    ``stockade serve`` (one of :data:`SERVICES`), started and stopped together."""

    settings: Settings
    services: frozenset[str] = frozenset(SERVICES)
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
    worktrace: WorktraceRunner | None = None
    listeners: list[Listener] = field(default_factory=list)
    _stack: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)
    _identity_api: IdentityAPI | None = None
    _authz_api: AuthzClient | None = None
    _tls: CertificateFiles | None = None
    renewer: CertificateRenewer | None = None
    """Renews this process's certificate (``tls.source = "openbao-pki"``), else None."""

    def __post_init__(self) -> None:
        unknown = self.services - set(SERVICES)
        if unknown or not self.services:
            raise ConfigError(
                f"unknown service {', '.join(sorted(unknown)) or '(none)'};"
                f" expected one of {', '.join(SERVICES)}"
            )

    @property
    def embedded(self) -> bool:
        """Every service in this process (``stockade up``)."""
        return self.services == frozenset(SERVICES)

    async def start(self) -> None:
        try:
            self._check_peers()
            await self._start()
        except BaseException:
            await self.stop()
            raise

    def _check_peers(self) -> None:
        """Fail before starting anything when a needed peer has no address (one line each)."""
        peers = self.settings.peers
        worktrace = self.settings.worktrace
        if "worktrace" in self.services and worktrace.source is None and not self.embedded:
            raise ConfigError(
                "worktrace.export_file: `stockade serve worktrace` needs a source; set"
                " STOCKADE_WORKTRACE__EXPORT_FILE or STOCKADE_WORKTRACE__NATS_SUBJECT"
            )
        peers_wt = worktrace.respond and worktrace.source is not None  # authz decides responses
        needs: dict[str, set[str]] = {
            "identity": {"gateway", "broker"},
            "authz": {"gateway", "broker"} | ({"worktrace"} if peers_wt else set()),
        }
        for peer, users in needs.items():
            if peer in self.services or not users & self.services:
                continue
            if getattr(peers, peer) is None:
                who = " and ".join(sorted(users & self.services))
                raise ConfigError(
                    f"peers.{peer}: {who} needs the {peer} service's address (host:port of"
                    f" `stockade serve {peer}`); set STOCKADE_PEERS__{peer.upper()}"
                )
        tls = self.settings.tls
        if not self.embedded and tls.source == "dev-ca" and tls.directory is None:
            raise ConfigError(
                "tls.directory: split services must trust one CA; set STOCKADE_TLS__DIRECTORY"
                ' to the dev CA\'s directory shared by them (or tls.source = "files")'
            )
        if tls.source == "openbao-pki":
            openbao_pki_source(self.settings)  # its settings checked before anything starts
        if not self.embedded and self.settings.bus.url is None:
            raise ConfigError(
                "bus.url: `stockade serve` needs an external NATS server shared by every"
                " service; set STOCKADE_BUS__URL (the embedded one is for `stockade up`)"
            )

    async def _start(self) -> None:
        settings = self.settings
        data_dir = prepare_data_dir(settings)
        stack = self._stack
        local = self.services
        if "gateway" in local and settings.gateway.enabled:
            check_host_key_files(settings.gateway)  # a bad key file: refused before anything runs

        if local & {"identity", "audit"}:
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
            name="stockade" if self.embedded else f"stockade-{'-'.join(sorted(local))}",
            connect_timeout=settings.bus.connect_timeout,
            token=self.nats.token if self.nats else None,
        )
        stack.push_async_callback(self.bus.close)
        await self.bus.ensure_streams()

        # --- audit store (issue 11): every event of the bus, chained and signed ---
        if "audit" in local and settings.audit.enabled:
            assert self.store is not None
            self.audit = AuditService(
                bus=self.bus, store=self.store, settings=settings.audit, data_dir=data_dir
            )
            stack.push_async_callback(self.audit.stop)
            await self.audit.start()
            self.listeners.append(Listener("audit store", f"signed heads: {self.audit.heads_file}"))
        if "gateway" in local and settings.gateway.recording_keep is not None:
            self.sweeper = RecordingSweeper(
                data_dir / "recordings", settings.gateway.recording_keep, publisher=self.bus
            )
            stack.push_async_callback(self.sweeper.stop)
            await self.sweeper.start()
        # --- end audit store ---

        if "identity" in local:
            assert self.store is not None
            self.identity = IdentityService(
                store=self.store,
                settings=settings.identity,
                keyring=keyring_for(settings),
                publisher=self.bus,
            )
        if "authz" in local:
            self.authorizer = Authorizer(settings=settings.authz, decision_sink=self.bus)
            stack.push_async_callback(self.authorizer.stop)
            await self.authorizer.start()

        ca = DevCA(settings.tls.directory or data_dir / "tls")
        gateway_id = settings.gateway.gateway_id or default_gateway_id(data_dir)
        # a split gateway's certificate names its gateway id: identity lets it beat, sweep and
        # open sessions for that gateway only
        uris = [gateway_uri(gateway_id)] if "gateway" in local and not self.embedded else []
        name = "api" if self.embedded else _cert_name(local)
        if settings.tls.source == "openbao-pki":
            self._tls = await self._openbao_tls(name, uris)
        else:
            self._tls = service_tls(settings, name, uris=uris)
        if uris:
            gateway_id = _certified_gateway_id(self._tls, settings.gateway.gateway_id)
        interceptors = []
        if settings.service_tokens.enabled and (self.identity or self.authorizer):
            # projected service-account tokens on every call (services split across Pods)
            verifier = ServiceTokenVerifier.from_settings(
                settings.service_tokens, "identity" if self.identity else "authz"
            )
            stack.push_async_callback(verifier.aclose)
            interceptors.append(ServiceAuthInterceptor(verifier, publisher=self.bus))
        self.rpc = RpcServer(
            interceptors=interceptors,
            identity=self.identity,
            authorizer=self.authorizer,
            tls=self._tls,
            host=settings.api.host,
            port=settings.api.port,
            admin_socket=settings.admin_socket if self.identity is not None else None,
            publisher=self.bus,
        )
        stack.push_async_callback(self.rpc.stop)
        await self.rpc.start()
        served: list[str] = [name for name in ("identity", "authz") if name in local]
        self.listeners.append(
            Listener(
                f"internal API (gRPC, mutual TLS: {', '.join(served) or 'health only'})",
                f"{settings.api.host}:{self.rpc.port}",
            )
        )
        if self.rpc.admin_socket is not None:
            self.listeners.append(
                Listener("admin API (gRPC, unix socket 0600)", str(settings.admin_socket))
            )

        gateway_settings = settings.gateway.model_copy(update={"gateway_id": gateway_id})
        if gateway_settings.port == 0 and "gateway" in local:
            # pick it now: nftables rules need the real port
            gateway_settings = gateway_settings.model_copy(
                update={"port": _free_port(gateway_settings.host)}
            )

        if "shield" in local and settings.shield.enabled:
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

        if "broker" in local:
            mounts: dict[str, Any] = {}
            if self.identity is not None and self.authorizer is not None and self.store:
                # --- web console (issue 12): pages under /console/ on the broker's listener;
                # it reads the store and identity directly, so it runs beside them only ---
                oidc_signin = None
                if settings.identity.oidc.enabled:  # "Sign in with OIDC" (code flow + PKCE)
                    oidc_signin = OidcSignIn(settings.identity.oidc, login=self.identity.login_oidc)
                    stack.push_async_callback(oidc_signin.aclose)
                mounts[PREFIX] = create_console(
                    identity=self.identity,
                    authz=self.authorizer,
                    store=self.store,
                    sessions=Sessions(await self.bus.key_value(LOGIN_BUCKET)),
                    recordings=data_dir / "recordings",
                    publisher=self.bus,
                    bans=self.shield.store if self.shield else None,
                    shield_settings=settings.shield,
                    oidc=oidc_signin,
                )
            self.broker = BrokerServer.from_settings(
                settings,
                identity=self.identity_api,
                authz=self.authz_api,
                publisher=self.bus,
                ca=ca,
                metrics=self.shield.metrics_text if self.shield else None,
                audit=AuditSearch(self.store) if self.store is not None else None,
                mounts=mounts,
            )
            stack.push_async_callback(self.broker.stop)
            await self.broker.start()
            self.listeners.append(Listener("credential broker (HTTPS)", self.broker.url))
            if mounts:
                self.listeners.append(Listener("web console", f"{self.broker.url}{PREFIX}/"))
            else:
                log.info("console_not_served", reason="needs identity and authz in this process")
            if settings.vault.addr is None:
                log.warning("no secrets backend configured; set VAULT_ADDR and VAULT_TOKEN")

        if gateway_settings.api_url is None and self.broker is not None:
            gateway_settings = gateway_settings.model_copy(update={"api_url": self.broker.url})
        elif gateway_settings.api_url is None and "gateway" in local:
            log.warning("gateway.api_url is unset; sessions reach no broker (set it to its URL)")

        if "gateway" in local and gateway_settings.enabled:
            if self.broker is None and settings.workspace.sandbox_network:
                log.warning(
                    "sandbox_sessions_cannot_reach_the_broker",
                    reason="the broker runs in another process, and each local workspace has"
                    " its own network namespace (loopback only): per-session broker sockets"
                    " need the broker in the gateway's process",
                    hint="run both under `stockade up`, or set workspace.sandbox_network=false",
                )
            container = ContainerBackend(
                data_dir=data_dir, runtime=self._podman_runtime, sockets=self._session_socket
            )
            stack.push_async_callback(container.close)
            deny_list: DenyList | None = self.shield.deny_list if self.shield else None
            if deny_list is None and settings.shield.enabled:
                # the shield runs elsewhere: follow its ban store (NATS KV) here
                deny_list = DenyList()
                sync = await BanSync.start(self.bus, [deny_list])
                stack.push_async_callback(sync.stop)
            self.gateway = Gateway(
                settings=gateway_settings,
                identity=self.identity_api,
                authz=self.authz_api,
                publisher=self.bus,
                events=self.bus,
                deny_list=deny_list,
                data_dir=data_dir,
                prepare_home=self._credential_helpers,
                reserved_ports=self._reserved_ports(),
                extra_backends={"container": container},
                failures=FailureBatcher(self.bus),
                session_ends=ReliablePublisher(self.bus),  # the broker needs every one
                sandbox_network=settings.workspace.sandbox_network,
                # sandbox sessions reach an in-process broker through their own socket
                session_sockets=self._session_socket if self.broker is not None else None,
            )
            stack.push_async_callback(self.gateway.stop)
            await self.gateway.start()
            for host, port in self.gateway.listening:
                shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                self.listeners.append(Listener("SSH gateway", shown))

        if "worktrace" in local:  # last: its kills and bans go to the services started above
            await self._start_worktrace(data_dir)

    async def _start_worktrace(self, data_dir: Path) -> None:
        """Worktrace on the source ``[worktrace]`` names (see ``cli._worktrace``); none: off
        (``stockade serve worktrace`` refuses that in :meth:`_check_peers`)."""
        settings = self.settings.worktrace
        assert self.bus is not None
        self.worktrace = await start_worktrace(
            settings,
            bus=self.bus,
            authz=self.authz_api if settings.respond else None,
            data_dir=data_dir,
        )
        if self.worktrace is not None:
            self._stack.push_async_callback(self.worktrace.stop)
            self.listeners.append(Listener(*self.worktrace.describe()))

    async def _openbao_tls(self, name: str, uris: Sequence[str]) -> CertificateFiles:
        """``tls.source = "openbao-pki"``: a certificate from OpenBao's PKI engine, kept in
        ``tls.directory`` (the data dir's ``tls/openbao`` when unset) and renewed in the
        background at two thirds of its lifetime; the servers and channels of this process
        reload it when ``..data`` swaps, the previous one kept until the renewal after. One
        is issued at start when there is none, it is due, or it names other SANs."""
        settings = self.settings
        renewer = CertificateRenewer(
            openbao_pki_source(settings),
            settings.tls.directory or settings.data_dir / "tls" / "openbao",
            common_name=name,
            sans=[name, "localhost", "127.0.0.1", "::1", *uris],
            lifetime=timedelta(hours=settings.tls.lifetime_hours),
        )
        if _usable(renewer, name, uris):
            await renewer.ensure()
        else:
            await renewer.renew()
        stop = asyncio.Event()
        task = asyncio.create_task(renewer.run(stop), name="tls-renew")

        async def stop_renewing() -> None:
            stop.set()
            await task

        self._stack.push_async_callback(stop_renewing)
        self.renewer = renewer
        return CertificateFiles(renewer.cert_path, renewer.key_path, renewer.ca_path)

    def tls_errors(self) -> dict[str, str]:
        """Why a certificate change was refused or a renewal failed, by part (the previous
        certificate keeps serving meanwhile); ``stockade status`` shows them."""
        found = {
            "certificate": self._tls.check() if self._tls is not None else None,
            "broker certificate": self.broker.tls_error if self.broker is not None else None,
            "renewal": self.renewer.error if self.renewer is not None else None,
        }
        return {part: error for part, error in found.items() if error}

    @property
    def identity_api(self) -> IdentityAPI:
        """Identity as the other services see it: the service here, else its gRPC client."""
        if self.identity is not None:
            return self.identity
        if self._identity_api is None:
            self._identity_api = IdentityClient(
                self._peer_channel("identity"),
                target=str(self.settings.peers.identity),
                timeout=self.settings.peers.timeout,
            )
        return self._identity_api

    @property
    def authz_api(self) -> Authorizer | AuthzClient:
        """Authz as the other services see it: the authorizer here, else its gRPC client."""
        if self.authorizer is not None:
            return self.authorizer
        if self._authz_api is None:
            self._authz_api = AuthzClient(
                self._peer_channel("authz"),
                target=str(self.settings.peers.authz),
                timeout=self.settings.peers.timeout,
            )
        return self._authz_api

    def _peer_channel(self, peer: str) -> Any:
        address = getattr(self.settings.peers, peer)
        assert address is not None  # _check_peers
        assert self._tls is not None  # _start
        host, _, port = str(address).rpartition(":")
        tokens = self.settings.service_tokens
        channel = mtls_channel(
            host.removeprefix("[").removesuffix("]"),
            int(port),
            self._tls,
            token=ProjectedToken(tokens.token_dir / peer) if tokens.enabled else None,
            server_name=(self.settings.peers.server_name or "{service}").replace("{service}", peer),
        )
        self._stack.push_async_callback(channel.close, None)
        return channel

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
        if self.broker is None:
            raise BackendError(
                "container workspaces need the broker in the gateway's process for their"
                " per-session credential sockets; run them under `stockade up`"
            )
        return await self.broker.open_session_socket(session_id, token, path, uid)

    def _credential_helpers(self, home: Path, uid: int, gid: int) -> None:
        """Point git, Docker and kubectl in a workspace home at the credential helpers."""
        if self.broker is not None:
            api_url, ca_path = self.broker.url, self.broker.ca_path
        else:  # the broker runs elsewhere: gateway.api_url, certificates from the same CA
            assert self.gateway is not None
            assert self._tls is not None
            api_url = self.gateway.settings.api_url or "https://127.0.0.1:8443"
            ca_path = self._tls.paths[2]
        workspace_config(
            home,
            api_url,
            ca_path,
            clusters={
                c.name: KubeCluster(c.server, c.ca_file) for c in self.settings.broker.clusters
            },
            owner=(uid, gid),
            helper_python=_SYSTEM_PYTHON,
        )

    async def stop(self) -> None:
        await self._stack.aclose()


def _cert_name(services: frozenset[str]) -> str:
    """The certificate's common name: what identity's per-method checks know the caller as
    (``gateway``, ``broker``, ...)."""
    return "-".join(sorted(services))


def openbao_pki_source(settings: Settings) -> OpenBaoPKISource:
    """OpenBao's PKI engine (``<tls.pki_mount>/issue/<tls.pki_role>``) at ``vault.addr``, logged
    in as the broker is: ``vault.token`` (``VAULT_TOKEN``), or a fresh login with the projected
    token in ``vault.kubernetes_jwt_file`` before each issue. The token travels in the
    ``X-Vault-Token`` header only."""
    vault, tls = settings.vault, settings.tls
    if not vault.addr or not vault.addr.startswith(("http://", "https://")):
        raise ConfigError(
            'vault.addr: tls.source = "openbao-pki" needs OpenBao\'s http(s) address;'
            " set VAULT_ADDR"
        )
    addr = vault.addr
    verify: str | bool = str(vault.ca_cert) if vault.ca_cert is not None else True
    token: Callable[[], str | Awaitable[str]]
    if vault.auth_method == "token":
        if vault.token is None:
            raise ConfigError('vault.token: tls.source = "openbao-pki" needs VAULT_TOKEN')
        token = vault.token.get_secret_value
    elif vault.auth_method == "kubernetes":
        role = vault.kubernetes_role
        if not role:
            raise ConfigError("vault.kubernetes_role is needed for Kubernetes auth")
        jwt, mount = ProjectedToken(vault.kubernetes_jwt_file), vault.kubernetes_mount

        async def login() -> str:
            client_token, _lease = await vault_jwt_login(
                addr, role=role, token=jwt, mount=mount, verify=verify
            )
            return client_token

        token = login
    else:
        raise ConfigError(
            'vault.auth_method: tls.source = "openbao-pki" logs in with "token" or'
            ' "kubernetes" (AppRole is not wired for certificates)'
        )
    return OpenBaoPKISource(
        addr, role=tls.pki_role, token=token, mount=tls.pki_mount, verify=verify
    )


def _certified_gateway_id(files: CertificateFiles, configured: str | None) -> str:
    """The one gateway id the gateway's certificate names (identity accepts no other), checked
    against ``gateway.gateway_id`` when that is set. A certificate from the dev CA names the
    configured id or the data dir's; one from files (cert-manager) or OpenBao names what its
    issuer put there, which the gateway then runs as."""
    cert = files.paths[0]
    ids = gateway_ids(cert.read_bytes())
    if len(ids) != 1:
        raise ConfigError(
            f"tls.directory: the gateway's certificate {cert} names {len(ids)} gateway ids; it"
            f" needs exactly one, as the URI SAN {gateway_uri('<id>')}"
        )
    try:
        gateway_uri(ids[0])  # identity refuses an id it would record otherwise (stripped)
    except InvalidInput:
        raise ConfigError(
            f"tls.directory: the gateway's certificate {cert} names the gateway id {ids[0]!r},"
            " which has spaces, '/', '?', '#' or '%'; identity refuses it"
        ) from None
    if configured is not None and configured != ids[0]:
        raise ConfigError(
            f"gateway.gateway_id: {configured!r}, but the certificate {cert} is gateway"
            f" {ids[0]!r}; identity would refuse every heartbeat"
        )
    return ids[0]


def service_tls(settings: Settings, name: str, *, uris: Sequence[str] = ()) -> CertificateFiles:
    """This process's certificate (common name ``name``, URI SANs ``uris``), key and CA bundle.

    ``tls.source = "dev-ca"``: issued by the dev CA in ``tls.directory`` (the data dir's
    ``tls`` when unset). Processes of one host share that directory's CA; each writes its own
    leaf under its data dir, so two gateways never overwrite each other's key. A leaf that
    lacks ``name`` or names other URIs (a gateway id from before, or none) is minted again.
    ``"files"``: ``tls.crt``/``tls.key``/``ca.crt`` in ``tls.directory`` (cert-manager's
    Secret volume), re-read when they change; ``uris`` are its issuer's business.
    """
    tls = settings.tls
    if tls.source == "files":
        if tls.directory is None:
            raise ConfigError('tls.directory: tls.source = "files" needs the certificate directory')
        files = CertificateFiles(
            tls.directory / "tls.crt", tls.directory / "tls.key", tls.directory / "ca.crt"
        )
        for path in files.paths:
            if not path.is_file():
                raise ConfigError(f"tls.directory: {path} is missing")
        return files
    if tls.source != "dev-ca":  # openbao-pki: Runtime renews it (an async issuer)
        raise ConfigError(f'tls.source: {tls.source!r} is not read from files; use "files"')
    own = settings.data_dir / "tls"
    ca = DevCA(tls.directory or own)
    # the service's name is a SAN of its certificate only: peers check it (peers.server_name)
    sans = [name, "localhost", "127.0.0.1", "::1", *uris]
    if ca.directory.resolve() == own.resolve():
        cert = own / f"{name}.pem"
        stale = cert.exists() and not _names(cert, name, uris)
        issued = ca.issue(name, sans=sans, force=stale)
        return CertificateFiles(issued.cert, issued.key, issued.ca)
    with _locked(ca.directory):
        ca.ensure()
    cert, key = own / f"{name}.pem", own / f"{name}.key"
    if not (cert.exists() and key.exists() and _names(cert, name, uris)):
        own.mkdir(parents=True, exist_ok=True, mode=0o700)
        cert_pem, key_pem = ca.mint(name, sans=sans)
        write_private(key, key_pem)
        write_private(cert, cert_pem, mode=0o644)
    return CertificateFiles(cert, key, ca.ca_cert_path)


def _usable(renewer: CertificateRenewer, name: str, uris: Sequence[str]) -> bool:
    """Whether the renewer's directory holds a pair to serve: a certificate naming ``name``
    and exactly the gateway ids of ``uris``, with its key (a broken key on disk is replaced by
    a new issue rather than failing the start)."""
    if renewer.current() is None or not _names(renewer.cert_path, name, uris):
        return False
    try:
        CertificateFiles(renewer.cert_path, renewer.key_path, renewer.ca_path)
    except (OSError, ValueError, TypeError) as exc:
        log.warning("tls.stored.unusable", cert=str(renewer.cert_path), error=str(exc)[:200])
        return False
    return True


def _names(cert: Path, name: str, uris: Sequence[str]) -> bool:
    """Whether ``cert`` has the DNS SAN ``name`` (one minted before peers checked it has not:
    it is minted again) and names exactly the gateway ids of ``uris`` (a data dir moved, or
    ``gateway.gateway_id`` changed: the old id must not stay in the certificate)."""
    try:
        named = gateway_ids(cert.read_bytes())
    except OSError:
        return False
    wanted = [u.removeprefix(GATEWAY_URI_PREFIX) for u in uris if u.startswith(GATEWAY_URI_PREFIX)]
    return name in dns_names(cert) and named == wanted


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """An exclusive lock on ``directory`` (two services creating one CA at once)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(directory / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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
    """``url`` without ``user:password@``: the banner never prints a credential. A list of
    URLs (a NATS cluster, comma-separated) loses every one."""
    if "," in url:
        return ",".join(_without_userinfo(part) for part in url.split(","))
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    host, slash, path = rest.partition("/")
    return f"{scheme}://{host.rpartition('@')[2]}{slash}{path}"

"""One settings tree for every service.

Sources, highest priority first: constructor arguments, environment (``STOCKADE_*``, nested
sections with ``__``: ``STOCKADE_GATEWAY__PORT=2222``), a few well-known names
(:data:`ENV_ALIASES`: ``STOCKADE_NATS_URL``, ``VAULT_ADDR``, ``VAULT_TOKEN``), then the TOML file
named by ``STOCKADE_CONFIG`` or ``./stockade.toml`` when present. Every field is documented where
it is declared; validation happens once, in :func:`load_settings`, and a failure is a
:class:`~stockade.core.errors.ConfigError` naming the key.
"""

from __future__ import annotations

import ipaddress
import os
import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from .durations import parse_duration
from .errors import ConfigError, InvalidInput

__all__ = [
    "ENV_ALIASES",
    "ApiSettings",
    "AuditSettings",
    "AuthzSettings",
    "BrokerKubernetesSettings",
    "BrokerSettings",
    "BusSettings",
    "CredentialRoute",
    "GatewaySettings",
    "IdentitySettings",
    "LogSettings",
    "Settings",
    "ShieldSettings",
    "StoreSettings",
    "VaultSettings",
    "load_settings",
]

#: Environment names that are not ``STOCKADE_<SECTION>__<FIELD>`` but are honoured because users
#: of NATS and Vault already set them. Maps the variable to its (section, field) path.
ENV_ALIASES: dict[str, tuple[str, str]] = {
    "STOCKADE_NATS_URL": ("bus", "url"),
    "STOCKADE_DATABASE_URL": ("store", "url"),
    "VAULT_ADDR": ("vault", "addr"),
    "VAULT_TOKEN": ("vault", "token"),
    "STOCKADE_VAULT_ADDR": ("vault", "addr"),
    "STOCKADE_VAULT_TOKEN": ("vault", "token"),
}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class LogSettings(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    """Minimum level written to the log."""
    json_output: bool | None = None
    """JSON lines (True) or coloured console output (False); unset: JSON when stderr is no TTY."""


class StoreSettings(_Section):
    url: str | None = None
    """SQLAlchemy URL. Unset: SQLite file ``stockade.db`` in the data dir (WAL mode).
    PostgreSQL: ``postgresql://user@host:5432/db`` (driven by asyncpg)."""
    echo: bool = False
    """Log every SQL statement (debugging only)."""


class BusSettings(_Section):
    url: str | None = None
    """NATS URL of an external server. Unset: ``stockade up`` starts the embedded
    ``nats-server`` (JetStream, storage in the data dir) on a free loopback port."""
    connect_timeout: float = Field(default=5.0, gt=0)
    """Seconds to wait for NATS (and for the embedded server to become ready)."""


class IdentitySettings(_Section):
    issuer: str = "stockade"
    """``iss`` of every issued JWT, checked on verification."""
    audience: str = "stockade"
    """Default ``aud`` of issued JWTs, checked on verification."""
    token_ttl: int = Field(default=900, gt=0, le=86400)
    """Default JWT lifetime in seconds (15 minutes)."""
    algorithm: Literal["EdDSA", "ES256"] = "EdDSA"
    """Signing algorithm for new signing keys."""
    leeway: int = Field(default=0, ge=0, le=300)
    """Seconds of clock skew tolerated on ``exp``/``nbf``/``iat``."""
    min_rsa_bits: int = Field(default=3072, ge=2048)
    """Smallest RSA SSH key accepted."""


class AuthzSettings(_Section):
    policy_dir: Path | None = None
    """Directory of ``.rego`` files (a bundle). Unset: the bundle shipped with Stockade."""
    reload_interval: float = Field(default=1.0, gt=0)
    """Seconds between checks of the bundle for changes (hot reload)."""
    decision_log: bool = True
    """Publish every decision on the bus (identical decisions within a second folded)."""
    fold_window: float = Field(default=1.0, gt=0)
    """Seconds within which identical decisions fold into one record with a count."""


class ApiSettings(_Section):
    host: str = "127.0.0.1"
    """Address the internal gRPC API (identity, authz) listens on, mutual TLS."""
    port: int = Field(default=7443, ge=0, le=65535)
    """Port of the internal gRPC API; 0 picks a free port."""
    admin_socket: Path | None = None
    """Unix socket (mode 0600, in a 0700 directory) for admin commands.
    Unset: ``run/admin.sock`` in the data dir."""


class GatewaySettings(_Section):
    host: str = "127.0.0.1"
    """Address the SSH gateway listens on (``::1`` or ``::`` for IPv6)."""
    port: int = Field(default=2222, ge=0, le=65535)
    """SSH port; 0 picks a free port."""
    enabled: bool = True
    """Start the SSH gateway inside ``stockade up``."""
    extra_hosts: list[str] = []
    """More addresses to listen on with the same port, e.g. ``["::1"]`` for IPv6 as well."""
    gateway_id: str | None = None
    """Name of this gateway in events (``gateway_id``). Unset: the host name."""
    handshake_timeout: float = Field(default=15.0, gt=0, le=300)
    """Seconds from TCP accept until the client's first authentication request (version
    exchange and key exchange); a stalled handshake is closed and reported."""
    login_timeout: float = Field(default=60.0, gt=0, le=600)
    """Seconds from TCP accept until authentication must have succeeded."""
    max_connections: int = Field(default=2000, ge=1)
    """Open connections in total; more are closed at accept, before any SSH byte."""
    max_connections_per_source: int = Field(default=100, ge=1)
    """Open connections from one source address."""
    max_channels_per_connection: int = Field(default=16, ge=1, le=1024)
    """Open channels (sessions, forwards) on one connection; more are refused."""
    forward_to_loopback: bool = False
    """Let ``ssh -L``/``-W`` reach loopback and link-local addresses of the gateway host. Off:
    forwards opened by the gateway could otherwise reach its own internal services (NATS, the
    database, the broker) from outside."""
    max_auth_failures: int = Field(default=6, ge=1, le=100)
    """Rejected credentials on one connection before it is closed (OpenSSH's MaxAuthTries)."""
    proxy_protocol: bool = False
    """Require a PROXY protocol v1 or v2 header on every connection (behind a load balancer);
    the client address in it is used for limits, bans, policy and events."""
    proxy_trusted: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = Field(
        default_factory=lambda: [
            ipaddress.ip_network("127.0.0.1/32"),
            ipaddress.ip_network("::1/128"),
        ]
    )
    """Load balancers allowed to send a PROXY header (with ``proxy_protocol``). A connection from
    any other address is refused: otherwise a client could claim to be an allowlisted address
    or frame someone else for its failures."""
    password_auth: bool = True
    """Offer password authentication (still only for users with a password whom policy
    allows ``user.auth`` with ``method: password``)."""
    sandbox: Literal["auto", "bubblewrap", "none"] = "auto"
    """How the ``local`` backend runs sessions: ``bubblewrap`` (required), ``none`` (plain
    subprocess), or ``auto`` (bubblewrap when installed, else plain with a warning)."""
    shell: str = "/bin/bash"
    """Login shell of ``local`` workspace sessions."""
    accept_env: list[str] = ["LANG", "LC_*", "TZ", "COLORTERM"]
    """Client environment variables passed into sessions (``*`` matches a suffix), as
    sshd's ``AcceptEnv``."""
    api_url: str | None = None
    """``STOCKADE_API`` given to sessions. Unset: ``https://<broker.host>:<broker.port>``."""
    recording_max_bytes: int = Field(default=1 << 30, ge=4096)
    """Largest session recording; output past it is not recorded (the file says so)."""
    recording_keep: Annotated[timedelta, BeforeValidator(lambda v: _duration(v))] | None = None
    """How long recordings are kept (``90d``); a daily sweep removes older ones and says so in
    an audit event. Unset: kept forever."""
    recording_compress: Literal["none", "gzip"] = "none"
    """Compress a finished recording (``.cast.gz``); ``sessions play``/``export`` read both."""
    stop_grace: float = Field(default=30.0, ge=0, le=3600)
    """Seconds sessions get to finish on shutdown before they are closed with a message."""
    upstream_connect_timeout: float = Field(default=10.0, gt=0, le=120)
    """Seconds to reach and authenticate to an ``ssh`` backend's upstream sshd."""


def _duration(value: Any) -> timedelta:
    try:
        return parse_duration(value)
    except InvalidInput as exc:
        raise ValueError(exc.problem) from exc


#: A duration in settings: ``90s``, ``10m``, ``1h30m``, ``7d``, or a number of seconds.
Duration = Annotated[timedelta, BeforeValidator(_duration)]

EnforcerName = Literal["denylist", "nftables", "exec"]
DEFAULT_ENFORCERS: tuple[EnforcerName, ...] = ("denylist", "nftables")
_NFT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,31}")


class ShieldSettings(_Section):
    """SSH Shield: turns ``stockade.auth.failed`` events into bans (TOML section ``[shield]``).

    Defaults follow fail2ban's sshd jail (5 failures in 10 minutes, 10 minute first ban) and
    CrowdSec's ssh-bf / ssh-bf_user-enum scenarios, with sshguard-style escalation per strike.
    """

    enabled: bool = True
    """Run SSH Shield inside ``stockade up``."""
    window: Duration = timedelta(minutes=10)
    """Sliding window over which a source's failures are counted (fail2ban ``findtime``)."""
    threshold: float = Field(default=5.0, gt=0)
    """Weighted failures within ``window`` that ban a source (fail2ban ``maxretry``)."""
    ban_schedule: list[Duration] = Field(
        default_factory=lambda: [_duration(d) for d in ("10m", "1h", "24h", "7d")], min_length=1
    )
    """Ban length per strike: the first ban lasts the first entry, the second the second, ...;
    strikes past the end repeat the last entry."""
    strike_memory: Duration = timedelta(days=7)
    """How long after a ban ends its strike is remembered for escalation (fail2ban recidive)."""
    allowlist: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = Field(
        default_factory=lambda: [
            ipaddress.ip_network("127.0.0.1/32"),
            ipaddress.ip_network("::1/128"),
        ]
    )
    """CIDRs that are never banned, whatever they do. The default holds only the exact
    loopback addresses, so other 127.0.0.0/8 addresses can stand in for attackers in tests."""
    ipv6_prefix: int = Field(default=64, ge=1, le=128)
    """IPv6 sources are counted and banned per network of this prefix length (one /64 is
    usually one host or one customer)."""
    enum_usernames: int = Field(default=5, ge=0)
    """User-enumeration rule: this many distinct usernames from one source within
    ``enum_window`` ban it, whatever its failure count (CrowdSec ssh-bf_user-enum). 0: off."""
    enum_window: Duration = timedelta(minutes=10)
    """Sliding window of the user-enumeration rule."""
    reason_weights: dict[str, float] = Field(default_factory=dict)
    """Weight of a failure by its ``reason`` (e.g. ``{unknown_user = 2.0}``); unlisted reasons
    weigh ``default_weight``. A weight of 0 never counts."""
    default_weight: float = Field(default=1.0, ge=0)
    """Weight of a failure whose reason is not in ``reason_weights``."""
    enforcers: list[EnforcerName] = Field(default_factory=lambda: list(DEFAULT_ENFORCERS))
    """Where bans are enforced, several at once: ``denylist`` (the gateway drops banned sources
    at TCP accept), ``nftables`` (kernel drop; reported once and skipped when ``nft`` is missing or
    not permitted), ``exec`` (runs ``exec_command`` per ban and unban)."""
    nft_table: str = "stockade"
    """Name of the nftables table (family ``inet``) that holds the ban sets and the drop rule."""
    nft_netns: str | None = None
    """Network namespace (``ip netns`` name) whose nftables to manage; unset: our own."""
    ports: list[Annotated[int, Field(ge=1, le=65535)]] = Field(default_factory=list)
    """TCP ports the nftables rule drops banned sources on. Empty: the gateway's port."""
    exec_command: list[str] = Field(default_factory=list)
    """Command (argv) of the ``exec`` enforcer; ``{action}`` (``ban``/``unban``), ``{source}``,
    ``{seconds}`` and ``{reason}`` are substituted in each argument."""
    exec_timeout: float = Field(default=10.0, gt=0)
    """Seconds a run of ``exec_command`` may take before it is killed."""

    @field_validator("allowlist", mode="before")
    @classmethod
    def _networks(cls, value: Any) -> Any:
        if isinstance(value, list):
            out = []
            for item in value:
                try:
                    out.append(ipaddress.ip_network(str(item), strict=False))
                except ValueError as exc:
                    raise ValueError(f"{item!r} is not a CIDR such as 10.0.0.0/8") from exc
            return out
        return value

    @field_validator("reason_weights")
    @classmethod
    def _weights(cls, value: dict[str, float]) -> dict[str, float]:
        for reason, weight in value.items():
            if weight < 0:
                raise ValueError(f"weight of {reason!r} must be >= 0, got {weight}")
        return value

    @field_validator("nft_table")
    @classmethod
    def _table(cls, value: str) -> str:
        if not _NFT_NAME.fullmatch(value):
            raise ValueError("use letters, digits and _ (at most 32, starting with a letter)")
        return value

    @model_validator(mode="after")
    def _exec_needs_command(self) -> ShieldSettings:
        if "exec" in self.enforcers and not self.exec_command:
            raise ValueError("exec_command: required when enforcers include 'exec'")
        return self


class CredentialRoute(_Section):
    """One row of the broker's routing table: which backend answers which targets."""

    pattern: str = Field(default="*", min_length=1, max_length=253)
    """Glob (``fnmatch``, case-insensitive) on the target: the git host (with ``:port`` when
    the URL has one), the Docker registry host or the Kubernetes cluster name."""
    kind: Literal["git", "docker", "kubernetes", "*"] = "*"
    """The credential kind this row applies to; ``*`` for every kind."""
    backend: Literal["vault", "kubernetes"] = "vault"
    """The backend answering matching requests (``kubernetes`` serves only kind
    ``kubernetes``)."""


class BrokerKubernetesSettings(_Section):
    """The ``kubernetes`` backend: a TokenRequest for a service account per request."""

    api_url: str | None = None
    """Kubernetes API server URL. Unset: in-cluster, ``https://$KUBERNETES_SERVICE_HOST:
    $KUBERNETES_SERVICE_PORT``."""
    token_file: Path = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
    """The broker's own service account token, read at every request (projected tokens
    rotate). It needs ``create`` on ``serviceaccounts/token``."""
    ca_file: Path | None = Path("/var/run/secrets/kubernetes.io/serviceaccount/ca.crt")
    """CA bundle of the API server. Unset: the system trust store."""
    namespace: str = Field(default="stockade-workspaces", min_length=1, max_length=253)
    """Namespace of the service account; ``{user}`` and ``{cluster}`` are substituted."""
    service_account: str = Field(default="{user}", min_length=1, max_length=253)
    """Service account the token is requested for; ``{user}`` and ``{cluster}`` are
    substituted."""
    audiences: list[str] = []
    """``spec.audiences`` of the TokenRequest. Empty: the API server's default audience."""
    expiration_seconds: int = Field(default=600, ge=600, le=86400)
    """Requested token lifetime (Kubernetes' minimum is 600 seconds)."""
    timeout: float = Field(default=5.0, gt=0, le=60)
    """Seconds to wait for the API server."""


class BrokerSettings(_Section):
    host: str = "127.0.0.1"
    """Address the HTTPS credential/admin API listens on."""
    port: int = Field(default=8443, ge=0, le=65535)
    """HTTPS port; 0 picks a free port."""
    audience: str | None = None
    """``aud`` that session tokens must carry. Unset: ``identity.audience``."""
    default_backend: Literal["vault", "kubernetes"] = "vault"
    """Backend for targets no row of ``routes`` matches."""
    routes: list[CredentialRoute] = []
    """Routing table, first match wins: which backend serves which kind and target pattern."""
    kubernetes: BrokerKubernetesSettings = BrokerKubernetesSettings()
    """The ``kubernetes`` (TokenRequest) backend."""
    backend_timeout: float = Field(default=10.0, gt=0, le=120)
    """Seconds a backend may take for one credential before the request answers 503."""
    audit_required: bool = True
    """Refuse to hand out a credential (503) when its audit event cannot be published."""
    max_body_bytes: int = Field(default=16384, ge=1024, le=1 << 20)
    """Largest request body accepted; larger ones answer 413."""


class VaultSettings(_Section):
    addr: str | None = None
    """Vault / OpenBao address (``VAULT_ADDR``). Unset: no secrets backend."""
    token: SecretStr | None = None
    """Vault token (``VAULT_TOKEN``), used when ``auth_method`` is ``token``."""
    auth_method: Literal["token", "approle", "kubernetes"] = "token"
    """How the broker logs in to Vault: a static token, AppRole, or Kubernetes auth."""
    approle_role_id: str | None = None
    """AppRole ``role_id`` (``auth_method = "approle"``)."""
    approle_secret_id: SecretStr | None = None
    """AppRole ``secret_id`` (``auth_method = "approle"``)."""
    approle_mount: str = "approle"
    """Mount path of the AppRole auth method."""
    kubernetes_role: str | None = None
    """Vault role for Kubernetes auth (``auth_method = "kubernetes"``)."""
    kubernetes_jwt_file: Path = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
    """Service account token presented to Vault's Kubernetes auth, read at each login."""
    kubernetes_mount: str = "kubernetes"
    """Mount path of the Kubernetes auth method."""
    namespace: str | None = None
    """Vault Enterprise / OpenBao namespace. Unset: the root namespace."""
    ca_cert: Path | None = None
    """CA bundle for Vault's TLS certificate. Unset: the system trust store."""
    timeout: float = Field(default=5.0, gt=0, le=60)
    """Seconds for one Vault HTTP call."""
    git_path: str = "secret/data/stockade/{user}/git/{host}"
    """KV v2 path of git credentials (fields ``username``, ``password``); placeholders
    ``{user}`` and ``{host}`` (``host[:port]``)."""
    docker_path: str = "secret/data/stockade/{user}/docker/{registry}"
    """KV v2 path of registry credentials (fields ``username``, ``secret``); placeholders
    ``{user}`` and ``{registry}`` (``host[:port]``)."""
    kubernetes_path: str = "secret/data/stockade/{user}/kubernetes/{cluster}"
    """KV v2 path of cluster tokens (field ``token``, optional ``expiration_timestamp``);
    placeholders ``{user}`` and ``{cluster}``."""


class AuditSettings(_Section):
    """The audit store: every event of the bus in one hash-chained table (``[audit]``)."""

    enabled: bool = True
    """Run the audit consumer inside ``stockade up``."""
    batch: int = Field(default=512, ge=1, le=10000)
    """Events written per transaction at most (one acknowledgement per batch)."""
    head_every_rows: int = Field(default=1000, ge=1, le=2000)
    """Sign the chain head after this many new rows..."""
    head_every_seconds: float = Field(default=10.0, gt=0, le=3600)
    """...or this many seconds after the first unsigned row, whichever comes first."""
    heads_file: Path | None = None
    """Append-only file of signed heads. Unset: ``audit/heads.jsonl`` in the data dir."""
    key_file: Path | None = None
    """Ed25519 key signing the heads (0600, outside the store). Unset: ``keys/audit_heads.pem``
    in the data dir (created on first start)."""


class _AliasSource(PydanticBaseSettingsSource):
    """Reads :data:`ENV_ALIASES` from the environment into their nested places."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        out: dict[str, dict[str, Any]] = {}
        for env, (section, key) in ENV_ALIASES.items():
            value = os.environ.get(env)
            if value:
                out.setdefault(section, {})[key] = value
        return dict(out)


def _config_file() -> Path | None:
    explicit = os.environ.get("STOCKADE_CONFIG")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"STOCKADE_CONFIG: {path} does not exist or is not a file")
        return path
    local = Path("stockade.toml")
    return local if local.is_file() else None


class Settings(BaseSettings):
    """The root of Stockade's configuration."""

    model_config = SettingsConfigDict(
        env_prefix="STOCKADE_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        use_attribute_docstrings=True,
    )

    data_dir: Path = Path(".stockade")
    """Where state lives: SQLite database, NATS JetStream, keys, CA, recordings."""
    log: LogSettings = LogSettings()
    store: StoreSettings = StoreSettings()
    bus: BusSettings = BusSettings()
    identity: IdentitySettings = IdentitySettings()
    authz: AuthzSettings = AuthzSettings()
    api: ApiSettings = ApiSettings()
    gateway: GatewaySettings = GatewaySettings()
    shield: ShieldSettings = ShieldSettings()
    broker: BrokerSettings = BrokerSettings()
    vault: VaultSettings = VaultSettings()
    audit: AuditSettings = AuditSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [
            init_settings,
            env_settings,
            _AliasSource(settings_cls),
        ]
        path = _config_file()
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    @property
    def database_url(self) -> str:
        """The store URL, defaulting to SQLite in the data dir."""
        if self.store.url:
            return self.store.url
        return f"sqlite:///{(self.data_dir / 'stockade.db').resolve()}"

    @property
    def admin_socket(self) -> Path:
        """The admin API's unix socket."""
        return self.api.admin_socket or (self.data_dir / "run" / "admin.sock")


def load_settings(**overrides: Any) -> Settings:
    """Build and validate the settings tree; errors name the key and how to fix it."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(part) for part in first["loc"])
        env = "STOCKADE_" + "__".join(str(part).upper() for part in first["loc"])
        raise ConfigError(
            f"setting {key} (env {env}): {first['msg']}"
            + (f" (got {first['input']!r})" if "token" not in key else "")
        ) from exc
    except Exception as exc:  # TOML syntax errors and the like
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"configuration file: {exc}") from exc

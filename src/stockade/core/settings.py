"""One settings tree for every service.

Sources, highest priority first: constructor arguments, environment (``STOCKADE_*``, nested
sections with ``__``: ``STOCKADE_GATEWAY__PORT=2222``), a few well-known names
(:data:`ENV_ALIASES`: ``STOCKADE_NATS_URL``, ``VAULT_ADDR``, ``VAULT_TOKEN``), then the TOML file
named by ``STOCKADE_CONFIG`` or ``./stockade.toml`` when present. Every field is documented where
it is declared; validation happens once, in :func:`load_settings`, and a failure is a
:class:`~stockade.core.errors.ConfigError` naming the key.
"""

from __future__ import annotations

import difflib
import hashlib
import ipaddress
import json
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
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
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
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
    "BrokerSocketSettings",
    "BusSettings",
    "CredentialRoute",
    "GatewaySettings",
    "IdentitySettings",
    "KubernetesCluster",
    "LogSettings",
    "OidcSettings",
    "Origin",
    "PeerSettings",
    "PreAuthSettings",
    "ServiceTokenSettings",
    "Settings",
    "ShieldSettings",
    "StoreSettings",
    "TlsSettings",
    "VaultSettings",
    "WorkspaceSettings",
    "WorktraceSettings",
    "config_file",
    "env_name",
    "instance_id",
    "load_settings",
    "read_config_file",
    "setting_origin",
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


def _fetched_over_tls(value: str | None, field: str) -> str | None:
    """``value`` if it is an https URL, or an http one on a loopback host (a test's JWKS, a
    sidecar): signing keys fetched over plain HTTP from anywhere else can be swapped by anyone
    on the path, who then signs tokens for whoever they like."""
    if value is None:
        return None
    scheme, sep, rest = value.partition("://")
    host = rest.split("/", 1)[0].rpartition("@")[2]
    host = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    host = host.removeprefix("[").removesuffix("]")
    if sep and scheme.lower() == "https" and host:
        return value
    if sep and scheme.lower() == "http":
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if loopback:
            return value
    raise ValueError(f"{field}: expected an https:// URL (http:// only on loopback), got {value!r}")


class OidcSettings(_Section):
    """Logins with ID tokens of an OpenID Connect provider (Keycloak, Hydra, OpenBao's
    ``identity/oidc/provider``): identity checks the token's signature against the issuer's
    JWKS, ``iss``, ``aud`` (``client_id``), ``exp``/``nbf``/``iat`` and, in the
    authorization-code flow, ``nonce``; the ``groups`` claim maps to Stockade roles."""

    enabled: bool = False
    """Accept OIDC logins (``issuer`` and ``client_id`` must be set)."""
    issuer: str | None = None
    """The provider's issuer URL, exactly as in its tokens' ``iss``."""
    client_id: str | None = None
    """Stockade's client id at the provider: the ``aud`` its ID tokens must name."""
    jwks_url: str | None = None
    """The provider's JWKS URL. Unset: from its discovery document
    (``<issuer>/.well-known/openid-configuration``)."""
    username_claim: str = "preferred_username"
    """The claim naming the Stockade user (it must pass the username grammar)."""
    groups_claim: str = "groups"
    """The claim listing the user's groups at the provider."""
    group_roles: dict[str, list[str]] = {}
    """Provider group → Stockade roles, e.g. ``{"platform-admins" = ["admin"]}``. A user's roles
    are the union over their groups, replaced at every login; groups not listed give none."""
    require_role: bool = True
    """Refuse a login whose groups map to no role (instead of a user with no role)."""
    create_users: bool = True
    """Create the Stockade user at their first OIDC login (else only existing users log in)."""
    algorithms: list[Literal["RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"]] = [
        "RS256",
        "ES256",
        "EdDSA",
    ]
    """Signature algorithms accepted in ID tokens (never ``none`` or HMAC)."""
    leeway: float = Field(default=30.0, ge=0, le=300)
    """Seconds of clock skew tolerated on ``exp``/``nbf``/``iat``."""
    max_age: float = Field(default=600.0, gt=0, le=86400)
    """Oldest ID token (``iat``) accepted, in seconds: a login uses a fresh token."""
    min_refresh: float = Field(default=30.0, gt=0, le=3600)
    """Fewest seconds between two JWKS fetches triggered by an unknown ``kid``."""

    @model_validator(mode="after")
    def _complete(self) -> OidcSettings:
        _fetched_over_tls(self.issuer, "issuer")
        _fetched_over_tls(self.jwks_url, "jwks_url")
        if self.enabled and not (self.issuer and self.client_id):
            missing = "issuer" if not self.issuer else "client_id"
            raise ValueError(f"{missing} must be set when OIDC logins are enabled")
        return self


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
    oidc: OidcSettings = OidcSettings()
    """Logins with ID tokens of an OpenID Connect provider (off by default)."""


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


def _cidrs(value: Any) -> Any:
    """Parses a list of CIDR strings, naming the entry that is not one."""
    if isinstance(value, list):
        out = []
        for item in value:
            try:
                out.append(ipaddress.ip_network(str(item), strict=False))
            except ValueError as exc:
                raise ValueError(f"{item!r} is not a CIDR such as 10.0.0.0/8") from exc
        return out
    return value


def _colon_ints(value: Any, *, field: str, example: str) -> Any:
    """``"10:30:100"`` (or a number, or a list) as a tuple of ints, for OpenSSH-style options."""
    if isinstance(value, bool):
        raise ValueError(f"write {field} as numbers separated by ':', e.g. {example}")
    if isinstance(value, int):
        return (value,)
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise ValueError(f"write {field} as numbers separated by ':', e.g. {example}") from exc
    if isinstance(value, str):
        parts = value.strip().split(":")
        if not all(part.strip().isdigit() for part in parts):
            raise ValueError(f"write {field} as numbers separated by ':', e.g. {example}")
        return tuple(int(part) for part in parts)
    if isinstance(value, list | tuple):
        return tuple(value)
    raise ValueError(f"write {field} as numbers separated by ':', e.g. {example}")


PenaltyOverflow = Literal["deny-all", "permissive"]


class PreAuthSettings(_Section):
    """Limits before authentication, with OpenSSH's semantics (``sshd_config(5)``: MaxStartups,
    PerSourceMaxStartups, PerSourceNetBlockSize, PerSourcePenalties, PerSourcePenaltyExemptList).

    TOML section ``[gateway.preauth]``. The defaults never throttle a user who logs in one
    connection after another or 32 at once from one address; tighten them to fight floods.
    """

    max_startups: Annotated[tuple[int, int, int], NoDecode] = (256, 30, 1024)
    """``start:rate:full`` over concurrent unauthenticated connections (sshd's MaxStartups):
    from ``start`` on, a new connection is refused with probability ``rate`` percent, rising
    linearly to 100 % at ``full``; at ``full`` every new connection is refused. A single number
    ``N`` means ``N:100:N``. Written ``"256:30:1024"`` or ``[256, 30, 1024]``."""
    per_source_max_startups: int | None = Field(default=64, ge=1)
    """Concurrent unauthenticated connections from one source block (sshd's
    PerSourceMaxStartups); unset for no limit. Keep it at 32 or more so that 32 parallel logins
    from one host (``xargs -P32 ssh ...``) pass."""
    per_source_net_block_size: Annotated[tuple[int, int], NoDecode] = (32, 64)
    """Prefix lengths ``ipv4:ipv6`` that group source addresses into one block for
    ``per_source_max_startups`` and the penalties (sshd's PerSourceNetBlockSize, whose default is
    32:128; ours counts an IPv6 /64, usually one host, as one source). ``"24"`` sets IPv4 only."""
    penalties: bool = True
    """Penalise sources whose connections end badly (sshd's PerSourcePenalties): once a block's
    outstanding penalty exceeds ``penalty_min`` seconds, it is refused before key exchange until
    the penalty expires. Off: no penalties at all."""
    penalty_crash: float = Field(default=90.0, ge=0, le=86400)
    """Seconds of penalty for a connection that crashed the protocol parser (0: none)."""
    penalty_authfail: float = Field(default=5.0, ge=0, le=86400)
    """Seconds of penalty for a connection that ended unauthenticated after at least one failed
    authentication (a rejected signature or password; a bare key query is no failure). Counted
    once per connection, however many attempts it made (0: none)."""
    penalty_noauth: float = Field(default=1.0, ge=0, le=86400)
    """Seconds of penalty for a connection that ended without authenticating and without a
    failed attempt: port scanners, ``ssh-keyscan`` (0: none)."""
    penalty_grace_exceeded: float = Field(default=10.0, ge=0, le=86400)
    """Seconds of penalty for a connection closed because it did not authenticate within the
    gateway's ``handshake_timeout``/``login_timeout`` (0: none)."""
    penalty_min: float = Field(default=15.0, ge=0, le=86400)
    """A block's penalty is enforced only once more than this many seconds are outstanding.
    Penalties add up while they last: with the defaults, four connections that fail
    authentication within 5 seconds (4 x 5 s, less the time gone by, > 15 s) are enforced; three,
    or failures spaced as a person retries by hand, never are."""
    penalty_max: float = Field(default=600.0, gt=0, le=7 * 86400)
    """Most seconds of penalty a block can accumulate; the refusal never lasts longer."""
    penalty_max_sources4: int = Field(default=65536, ge=1, le=1 << 24)
    """IPv4 blocks the penalty table tracks (penalties below ``penalty_min`` count too)."""
    penalty_max_sources6: int = Field(default=65536, ge=1, le=1 << 24)
    """IPv6 blocks the penalty table tracks."""
    penalty_overflow: PenaltyOverflow = "permissive"
    """When the IPv4 table is full: ``permissive`` forgets the penalties closest to expiry to
    make room; ``deny-all`` refuses every connection not in ``penalty_exempt`` until one
    expires."""
    penalty_overflow6: PenaltyOverflow | None = None
    """The same for the IPv6 table; unset: as ``penalty_overflow``."""
    penalty_exempt: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    """CIDRs never penalised nor refused for penalties (sshd's PerSourcePenaltyExemptList); the
    startup limits still apply to them. Empty by default: loopback addresses stand in for
    attackers in tests."""

    @field_validator("max_startups", mode="before")
    @classmethod
    def _max_startups(cls, value: Any) -> Any:
        parts = _colon_ints(value, field="max_startups", example="256:30:1024")
        if len(parts) == 1:
            return (parts[0], 100, parts[0])
        if len(parts) != 3:
            raise ValueError("write max_startups as start:rate:full, e.g. 256:30:1024")
        return parts

    @field_validator("max_startups")
    @classmethod
    def _startups_sane(cls, value: tuple[int, int, int]) -> tuple[int, int, int]:
        start, rate, full = value
        if start < 1:
            raise ValueError(f"start must be at least 1, got {start} (e.g. 256:30:1024)")
        if not 1 <= rate <= 100:
            raise ValueError(f"rate is a percentage from 1 to 100, got {rate} (e.g. 256:30:1024)")
        if full < start:
            raise ValueError(
                f"full ({full}) must not be below start ({start}): write start:rate:full, "
                "e.g. 256:30:1024"
            )
        return value

    @field_validator("per_source_net_block_size", mode="before")
    @classmethod
    def _block_size(cls, value: Any) -> Any:
        parts = _colon_ints(value, field="per_source_net_block_size", example="32:64")
        if len(parts) == 1:
            return (parts[0], 64)
        if len(parts) != 2:
            raise ValueError("write per_source_net_block_size as ipv4:ipv6, e.g. 32:64")
        return parts

    @field_validator("per_source_net_block_size")
    @classmethod
    def _block_sane(cls, value: tuple[int, int]) -> tuple[int, int]:
        v4, v6 = value
        if not 1 <= v4 <= 32:
            raise ValueError(f"the IPv4 prefix length must be 1 to 32, got {v4} (e.g. 32:64)")
        if not 1 <= v6 <= 128:
            raise ValueError(f"the IPv6 prefix length must be 1 to 128, got {v6} (e.g. 32:64)")
        return value

    @field_validator("penalty_exempt", mode="before")
    @classmethod
    def _exempt(cls, value: Any) -> Any:
        return _cidrs(value)

    @model_validator(mode="after")
    def _min_below_max(self) -> PreAuthSettings:
        if self.penalty_min >= self.penalty_max:
            raise ValueError(
                f"penalty_min ({self.penalty_min:g}) must be below penalty_max "
                f"({self.penalty_max:g}), or no penalty is ever enforced"
            )
        return self


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
    """Name of this gateway in events and in the session registry (``gateway_id``); unique per
    gateway process. Unset: ``<host name>-<instance id>`` (the instance id is derived from the
    data dir), so two gateways on one host never share a name. A split gateway's certificate
    names it (URI SAN ``spiffe://stockade/gateway/<id>``, minted so by the dev CA; from files or
    OpenBao the certificate's id is used, and must agree when this is set): identity accepts
    that gateway's heartbeats, sweeps and sessions from that certificate only."""
    heartbeat_interval: float = Field(default=1.0, ge=0.1, le=60)
    """Seconds between two heartbeats of this gateway into the session registry. Each beat also
    ends the sessions of gateways whose heartbeat is older than ``heartbeat_timeout``."""
    heartbeat_timeout: float = Field(default=3.0, ge=1.0, le=3600)
    """Seconds without a heartbeat after which a gateway counts as dead: the next beat of any
    other gateway ends its sessions (reason ``gateway_lost``) and revokes their tokens. At least
    twice ``heartbeat_interval``."""
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
    ecdsa_host_key: bool = False
    """Also present an ECDSA (NIST P-256) host key, for old clients that lack Ed25519."""
    host_key_files: list[Path] = []
    """Private host keys to present instead of the ones generated in the data directory, so
    that every gateway behind one load balancer shows the same host identity. Each file must
    be owned by the gateway's user and readable only by it (mode 0600; on Kubernetes, copy the
    key from its Secret, whose volume files are root's and group-readable with ``fsGroup``),
    unencrypted, one key per type (e.g. an Ed25519 and an ECDSA key); ``ecdsa_host_key`` then
    has no effect. Empty: keys generated per data directory."""
    preauth: PreAuthSettings = PreAuthSettings()
    """Limits before authentication: MaxStartups, per-source limits and penalties."""

    @model_validator(mode="after")
    def _heartbeat_window(self) -> GatewaySettings:
        if self.heartbeat_timeout < 2 * self.heartbeat_interval:
            raise ValueError(
                f"heartbeat_timeout ({self.heartbeat_timeout:g}) must be at least twice"
                f" heartbeat_interval ({self.heartbeat_interval:g}), or one late beat would"
                " end a live gateway's sessions"
            )
        return self


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
    nft_table: str | None = None
    """Name of the nftables table (family ``inet``) that holds the ban sets and the drop rule.
    Unset: ``stockade_`` and 8 hex digits of the SHA-256 of the data dir's absolute path, so two
    instances on one host never share (or rebuild) each other's table."""
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
    def _table(cls, value: str | None) -> str | None:
        if value is not None and not _NFT_NAME.fullmatch(value):
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


class BrokerSocketSettings(_Section):
    path: Path | None = None
    """The broker's shared unix socket for credential requests (plain HTTP; each request
    carries its session token). Unset: none. Per-session sockets need no setting."""
    mode: int = Field(default=0o660, ge=0, le=0o777)
    """Permission bits of the shared socket."""
    liveness_max_age: float = Field(default=5.0, ge=0, le=3600)
    """Seconds a verified session token is trusted from memory, while the bus (which announces
    session ends and kills) is connected; then the store is asked again. 0: always the store."""


_CLUSTER_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,251}[A-Za-z0-9])?")


class KubernetesCluster(_Section):
    """One ``[[broker.clusters]]`` entry: a cluster every session's kubeconfig names."""

    name: str
    """Cluster name: the kubeconfig's cluster and context, and what ``kubectl-credential-stockade
    --cluster NAME`` asks the broker for (the routing table's target)."""
    server: str
    """API server URL, ``https://host[:port]``."""
    ca_file: Path | None = None
    """PEM CA bundle of the API server, embedded in the kubeconfig
    (``certificate-authority-data``). Unset: the system trust store."""

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _CLUSTER_NAME.fullmatch(value):
            raise ValueError("use letters, digits, '.', '_' and '-' (at most 253)")
        return value

    @field_validator("server")
    @classmethod
    def _server(cls, value: str) -> str:
        if not re.fullmatch(r"https://[^\s/@]+(/[^\s]*)?", value):
            raise ValueError("expected an https:// URL (host[:port]) without credentials")
        return value


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
    sockets: BrokerSocketSettings = BrokerSocketSettings()
    """Unix-socket listeners (shared socket, session liveness held in memory)."""
    clusters: list[KubernetesCluster] = []
    """Kubernetes clusters (``[[broker.clusters]]``: ``name``, ``server``, ``ca_file``) written
    into every session's ``~/.kube/config``; the token still comes from the credential helper."""

    @field_validator("clusters")
    @classmethod
    def _unique_clusters(cls, value: list[KubernetesCluster]) -> list[KubernetesCluster]:
        names = [cluster.name for cluster in value]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"cluster {name!r} is listed twice")
        return value


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


class WorkspaceSettings(_Section):
    runtime: Literal["auto", "podman", "sandbox"] = "auto"
    """Where workspaces run on this host: ``podman`` (the rendered Pod in a container),
    ``sandbox`` (bubblewrap), or ``auto`` (Podman where installed, else bubblewrap; with neither,
    workspaces refuse to start and say what to install; never unsandboxed)."""
    idle_timeout: float = Field(default=900.0, ge=0)
    """Seconds a Podman workspace may run without a session before it is stopped."""
    podman_network: Literal["none", "bridge"] = "none"
    """Network of Podman workspaces: ``none`` (loopback only; the broker is reached through the
    session's credential socket) or ``bridge`` (Podman's default network, with egress)."""
    uid_first: int = Field(default=200000, ge=1000)
    """First uid handed to workspaces (one uid each, stable, never reused)."""
    uid_count: int = Field(default=65536, ge=1)
    """How many workspace uids there are."""
    sandbox_network: bool = True
    """Run each sandbox workspace in its own network namespace (loopback only; as root one per
    workspace, which ``ssh -L``/``-W`` leave from; otherwise one per session): the gateway
    host's loopback listeners are out of reach. On by default. The credential helpers reach
    the broker through each session's own unix socket, which needs the broker in the
    gateway's process (``stockade up``); with the broker elsewhere, helpers in such a sandbox
    cannot reach it. ``false``: sandbox sessions share the gateway host's network."""


class ServiceTokenSettings(_Section):
    enabled: bool = False
    """Require a projected service-account token on every internal gRPC call (services split
    across Pods). Off for ``stockade up``, where the services share one process."""
    issuer: str = "https://kubernetes.default.svc.cluster.local"
    """The cluster's service-account token issuer (``iss``); its JWKS verifies the tokens."""
    jwks_url: str | None = None
    """The issuer's JWKS URL. Unset: found through the issuer's OIDC discovery document."""
    audience: str | None = None
    """The audience callers request for this service. Unset: ``stockade-<service>``."""
    namespace: str = "default"
    """The namespace the release runs in; tokens of other namespaces are refused."""
    allow_file: Path = Path("/etc/stockade/service-auth.json")
    """JSON allow-lists, per callee: ``{"identity": {"audience": ..., "allow": {method: [sa]}}}``
    (the chart's ``service-auth`` ConfigMap)."""
    token_dir: Path = Path("/var/run/secrets/stockade/tokens")
    """Where this service's projected tokens are, one file per callee (``identity``, ``vault``)."""
    min_refresh: float = Field(default=30.0, gt=0, le=3600)
    """Fewest seconds between two JWKS fetches triggered by an unknown ``kid``."""

    @model_validator(mode="after")
    def _over_tls(self) -> ServiceTokenSettings:
        _fetched_over_tls(self.issuer, "issuer")
        _fetched_over_tls(self.jwks_url, "jwks_url")
        return self


def _peer_address(value: Any) -> Any:
    if value is None:
        return None
    text = str(value).strip()
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 or "/" in text:
        raise ValueError(f"expected host:port (e.g. 127.0.0.1:7443), got {text!r}")
    return text


PeerAddress = Annotated[str | None, BeforeValidator(_peer_address)]


class PeerSettings(_Section):
    """Where ``stockade serve`` reaches the services it does not run itself: gRPC over mutual
    TLS, each address ``host:port`` of that service's ``api`` listener. ``stockade up`` runs
    every service in one process and needs none."""

    identity: PeerAddress = None
    """The identity service (``stockade serve identity``), for gateways and brokers."""
    authz: PeerAddress = None
    """The authz service (``stockade serve authz``), for gateways and brokers."""
    server_name: str | None = None
    """The name each peer's server certificate must carry (a SAN): ``{service}`` in it is
    replaced by the peer's service name, e.g. ``stockade-{service}.stockade.svc``. Unset: the
    service name itself (``identity``, ``authz``), which the dev CA puts in that service's
    certificate only, so a server holding another service's certificate of the same CA (a
    gateway's, say) is never taken for identity."""
    timeout: float = Field(default=5.0, gt=0, le=120)
    """Seconds a call to a peer may take before it fails (authz: fails closed, a deny)."""


class TlsSettings(_Section):
    source: Literal["dev-ca", "files", "openbao-pki"] = "dev-ca"
    """Where service certificates come from: the data dir's dev CA, files another agent renews
    (cert-manager's Secret volume), or OpenBao's PKI engine renewed by Stockade itself."""
    directory: Path | None = None
    """Directory of ``tls.crt``/``tls.key``/``ca.crt``. Unset: ``tls`` in the data dir."""
    pki_mount: str = "pki"
    """Mount of OpenBao's PKI engine (``source = "openbao-pki"``)."""
    pki_role: str = "stockade"
    """PKI role issuing service certificates (``<pki_mount>/issue/<pki_role>``)."""
    lifetime_hours: float = Field(default=2160, gt=0, le=87600)
    """Lifetime requested for issued certificates (``source = "openbao-pki"``); renewed at two
    thirds of it. Fractions are allowed (0.25: 15 minutes)."""


class WorktraceSettings(_Section):
    """Worktrace: detections from Tetragon's export (TOML section ``[worktrace]``)."""

    enabled: bool = True
    """Run Worktrace inside ``stockade up`` (and ``stockade serve worktrace``) when a source is
    set (``export_file`` or ``nats_subject``); false: never. No source, no Worktrace: Tetragon
    runs only where it was deployed, so there is no export to guess at."""
    rules: list[Path] = []
    """Rule files or directories; empty: the default rule set shipped with Stockade."""
    export_file: Path | None = None
    """Tetragon's JSON export to follow across rotation (Tetragon's own default is
    ``/var/run/cilium/tetragon/tetragon.log``). Unset: no file is followed."""
    state_file: Path | None = None
    """Where the file follower records how far it got (file, offset and a fingerprint; 0600,
    replaced atomically), so a restart neither loses nor repeats events. Unset:
    ``worktrace/follower.json`` in the data dir."""
    nats_subject: str | None = Field(default=None, min_length=1, max_length=255)
    """Read events from this core NATS subject of the bus (one event a message, e.g. from a log
    shipper) instead of the export file; set one source, not both."""
    nats_queue: str = Field(default="stockade-worktrace", max_length=255)
    """Queue group of ``nats_subject``: Worktrace replicas share the events, each read once."""
    trusted_namespaces: list[Annotated[str, Field(min_length=1, max_length=253)]] = [
        "stockade-workspaces"
    ]
    """Namespaces whose Pods' ``stockade.dev/...`` labels tie an event to a workspace, user and
    session: where Stockade puts workspace Pods. An event of a Pod elsewhere (whoever may create
    a Pod there may write those labels) alerts unattributed and can kill or ban nobody."""
    reload_interval: float = Field(default=1.0, gt=0)
    """Seconds between looks at the rule files for changes (hot reload)."""
    poll_interval: float = Field(default=0.005, gt=0, le=1)
    """Seconds an idle file follower sleeps between looks at the export."""
    anomalies: bool = True
    """Score the rarity of process ancestries per blueprint."""
    learning_events: int = Field(default=1000, ge=0)
    """Execs of a blueprint that only teach the ancestry counts before rarity alerts start."""
    anomaly_threshold: float = Field(default=1.0, gt=0, le=1)
    """Rarity (``1 / (1 + ln(1 + count))``) from which an exec raises an anomaly alert; 1.0: only
    ancestries never seen before."""
    ancestry_depth: int = Field(default=4, ge=1, le=16)
    """Processes (the exec and its ancestors) that make up an ancestry."""
    respond: bool = True
    """Ask policy (action ``worktrace.respond``) how to answer each alert."""
    ban_seconds: float = Field(default=3600.0, gt=0)
    """Length of a ``ban_user`` response unless policy says ``ban_seconds``."""

    @model_validator(mode="after")
    def _one_source(self) -> WorktraceSettings:
        if self.export_file is not None and self.nats_subject is not None:
            raise ValueError("set export_file or nats_subject, not both (one source a service)")
        return self

    @property
    def source(self) -> str | None:
        """What the service reads (``file PATH`` / ``nats SUBJECT``); None: it does not run."""
        if not self.enabled:
            return None
        if self.export_file is not None:
            return f"file {self.export_file}"
        if self.nats_subject is not None:
            return f"nats {self.nats_subject}"
        return None


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


class _FileSource(PydanticBaseSettingsSource):
    """The TOML file, parsed here so that a syntax error names the file and its line."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path) -> None:
        super().__init__(settings_cls)
        self.path = path
        self.data = read_config_file(path)

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self.data)


def read_config_file(path: Path) -> dict[str, Any]:
    """Parse the TOML settings file; a syntax or encoding error is a ConfigError naming it."""
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration file ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte {exc.start}); save the configuration file as UTF-8"
        ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: TOML syntax error: {exc}") from None


def config_file() -> Path | None:
    """The TOML settings file in use: ``$STOCKADE_CONFIG``, else ``./stockade.toml`` if present."""
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
    workspace: WorkspaceSettings = WorkspaceSettings()
    service_tokens: ServiceTokenSettings = ServiceTokenSettings()
    tls: TlsSettings = TlsSettings()
    peers: PeerSettings = PeerSettings()
    worktrace: WorktraceSettings = WorktraceSettings()
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
        path = config_file()
        if path is not None:
            sources.append(_FileSource(settings_cls, path))
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

    @property
    def instance_id(self) -> str:
        """16 hex digits naming this instance on its host: SHA-256 of the data dir's path."""
        return instance_id(self.data_dir)

    @property
    def nft_table(self) -> str:
        """The nftables table of this instance: ``shield.nft_table``, else derived from the
        data dir (``stockade_<8 hex>``)."""
        return self.shield.nft_table or f"stockade_{self.instance_id[:8]}"


def instance_id(data_dir: Path) -> str:
    """16 hex digits of the SHA-256 of ``data_dir``'s absolute path (instances never share it)."""
    return hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:16]


#: Where a setting's value came from: ``("env", VARIABLE)``, ``("file", PATH)``,
#: ``("argument", "")`` (passed to :func:`load_settings`) or ``("default", "")``.
Origin = tuple[Literal["env", "file", "argument", "default"], str]


def _walk(data: Any, path: Sequence[str]) -> bool:
    """Whether ``data`` holds ``path`` (or a non-mapping value at a prefix of it)."""
    for part in path:
        if not isinstance(data, Mapping):
            return True  # a list or JSON value set as a whole, e.g. STOCKADE_BROKER__ROUTES
        found = next((k for k in data if str(k).lower() == part.lower()), None)
        if found is None:
            return False
        data = data[found]
    return True


def _env_variable(path: Sequence[str]) -> str | None:
    """The ``STOCKADE_*`` variable (or alias) that sets ``path``, if one is set."""
    present = {name.upper() for name in os.environ}
    for length in range(len(path), 0, -1):
        name = "STOCKADE_" + "__".join(part.upper() for part in path[:length])
        if name in present:
            return name
    if len(path) >= 2:
        for alias, target in ENV_ALIASES.items():
            if target == tuple(path[:2]) and os.environ.get(alias):
                return alias
    return None


def setting_origin(path: Sequence[str], overrides: Mapping[str, Any] | None = None) -> Origin:
    """Which source gives the setting at ``path`` (``("shield", "threshold")``) its value, in
    priority order: arguments, environment (and :data:`ENV_ALIASES`), the TOML file, default."""
    if overrides and _walk(overrides, path):
        return ("argument", "")
    variable = _env_variable(path)
    if variable is not None:
        return ("env", variable)
    file = config_file()
    if file is not None and _walk(read_config_file(file), path):
        return ("file", str(file))
    return ("default", "")


def env_name(path: Sequence[str]) -> str:
    """The environment variable of the setting at ``path``: ``STOCKADE_SHIELD__THRESHOLD``."""
    return "STOCKADE_" + "__".join(part.upper() for part in path)


def _check_env_names() -> None:
    """A ``STOCKADE_<SECTION>__<FIELD>`` variable whose section does not exist is an error,
    as a misspelled field is (pydantic-settings would silently ignore it)."""
    sections = sorted(Settings.model_fields)
    for name in sorted(os.environ):
        upper = name.upper()
        if not upper.startswith("STOCKADE_") or "__" not in upper:
            continue
        section, _, rest = upper.removeprefix("STOCKADE_").partition("__")
        if section.lower() in sections:
            continue
        close = difflib.get_close_matches(section.lower(), sections, n=1, cutoff=0.6)
        hint = (
            f"; did you mean STOCKADE_{close[0].upper()}__{rest}?"
            if close
            else f"; sections are {', '.join(sections)}"
        )
        raise ConfigError(f"{name}: unknown settings section {section.lower()!r}{hint}")


_SECRET_WORDS = ("token", "secret", "password")
_URL_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@/\s]*@")


def load_settings(**overrides: Any) -> Settings:
    """Build and validate the settings tree; errors name the key, where its value came from
    (the environment variable or the file) and how to fix it."""
    _check_env_names()
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = [str(part) for part in first["loc"]]
        key = ".".join(loc)
        named: list[str] = []
        for part in first["loc"]:
            if not isinstance(part, str):
                break
            named.append(part)
        kind, where = setting_origin(named, overrides)
        if kind == "file":
            origin = f"in {where}"
        elif kind == "env":
            origin = f"env {where}"
        elif kind == "argument":
            origin = "argument"
        else:
            origin = f"env {env_name(named)}"
        secret = any(word in key for word in _SECRET_WORDS)
        got = _URL_PASSWORD.sub(r"\g<1>[secure]@", repr(first["input"]))
        raise ConfigError(
            f"setting {key} ({origin}): {first['msg']}" + (f" (got {got})" if not secret else "")
        ) from None
    except SettingsError as exc:  # a STOCKADE_* value that should be JSON and is not
        text = str(exc)
        field = text.split('field "', 1)[-1].split('"', 1)[0]
        candidates = sorted(n for n in os.environ if n.upper().startswith(env_name([field])))
        named_vars = ", ".join(candidates) or env_name([field])
        raise ConfigError(f"{named_vars}: cannot parse the value ({text})") from None

"""Targets and the routing table: which backend answers which credential request.

Targets are normalized and checked here, where they are parsed, so a path template can never be
steered outside its prefix (no ``/``, ``..``, spaces or control characters reach a backend).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit

from stockade.core.errors import ConfigError, InvalidInput
from stockade.core.settings import CredentialRoute

from ._types import CredentialBackend, Kind

__all__ = [
    "Router",
    "normalize_host",
    "normalize_registry",
    "validate_cluster",
    "validate_cluster_server",
    "validate_user",
]

_HOST = re.compile(r"[a-z0-9]([a-z0-9-]{0,62})(\.[a-z0-9]([a-z0-9-]{0,62}))*\.?(:[0-9]{1,5})?")
_IPV6 = re.compile(r"\[[0-9a-f:.]{2,45}\](:[0-9]{1,5})?")
_CLUSTER = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,252})")
_USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._@-]{0,127}")


def normalize_host(value: str, *, field: str = "host") -> str:
    """``host[:port]`` lower-cased and checked; raises :class:`InvalidInput`."""
    text = value.strip().lower()
    if len(text) > 261 or not (_HOST.fullmatch(text) or _IPV6.fullmatch(text)) or ".." in text:
        raise InvalidInput(field, "expected a host name or address with an optional :port")
    _, _, port = text.rpartition("]")[2].partition(":")
    if port and not 0 < int(port) < 65536:
        raise InvalidInput(field, f"port {port} is out of range")
    return text.rstrip(".") if not port else text


def normalize_registry(server_url: str) -> str:
    """The registry (``host[:port]``) of a Docker server URL such as
    ``https://index.docker.io/v1/``; raises :class:`InvalidInput`."""
    text = server_url.strip()
    if "://" in text:
        scheme, _, text = text.partition("://")
        if scheme.lower() not in ("http", "https"):
            raise InvalidInput("server_url", "expected an http(s) URL or a registry host")
    host = text.split("/", 1)[0]
    if "@" in host:
        raise InvalidInput("server_url", "must not contain user information")
    return normalize_host(host, field="server_url")


def validate_cluster(value: str) -> str:
    """A Kubernetes cluster name as used in kubeconfig; raises :class:`InvalidInput`."""
    if not _CLUSTER.fullmatch(value) or ".." in value:
        raise InvalidInput("cluster", "expected letters, digits, '.', '_' or '-'")
    return value


def _server_key(url: str) -> tuple[str, int, str] | None:
    """``(host, port, path)`` of an ``https://`` API server URL, else None."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme.lower() != "https" or not parts.hostname or "@" in parts.netloc:
        return None
    return parts.hostname.lower().rstrip("."), port or 443, parts.path.rstrip("/")


def validate_cluster_server(cluster: str, server: str | None, configured: Mapping[str, str]) -> str:
    """The cluster name (:func:`validate_cluster`); when kubectl said which API server it will
    send the token to (``server``) and ``configured`` (name -> server, ``[[broker.clusters]]``)
    knows the cluster, that server must be the cluster's: a kubeconfig or ``kubectl --server``
    naming another one would have the cluster's token sent there. Raises InvalidInput."""
    name = validate_cluster(cluster)
    expected = configured.get(name)
    if server and expected is not None:
        got = _server_key(server)
        if got is None or got != _server_key(expected):
            raise InvalidInput(
                "server",
                f"the API server kubectl names is not the one configured for cluster {name}",
            )
    return name


def validate_user(value: str) -> str:
    """A user name fit for a path template; raises :class:`InvalidInput`."""
    if not _USER.fullmatch(value) or ".." in value:
        raise InvalidInput("user", f"user name {value!r} cannot be used in a secrets path")
    return value


class Router:
    """Chooses a backend per request: the first route whose kind and pattern match, else the
    default. Validated at construction: every named backend must exist and serve the kind."""

    def __init__(
        self,
        backends: Mapping[str, CredentialBackend],
        *,
        routes: Sequence[CredentialRoute] = (),
        default: str = "vault",
    ) -> None:
        self._backends = dict(backends)
        self._routes = list(routes)
        self._default = default
        for index, route in enumerate(self._routes):
            if route.backend not in self._backends:
                raise ConfigError(
                    f"broker.routes[{index}]: backend {route.backend!r} is not configured "
                    f"(configured: {', '.join(sorted(self._backends)) or 'none'})"
                )
            if route.backend == "kubernetes" and route.kind != "kubernetes":
                raise ConfigError(
                    f"broker.routes[{index}]: the kubernetes backend serves only "
                    'kind = "kubernetes"'
                )

    @property
    def backends(self) -> dict[str, CredentialBackend]:
        """The configured backends by name."""
        return dict(self._backends)

    def backends_for(self, kind: Kind) -> list[str]:
        """Names of the configured backends that may serve some target of ``kind``."""
        names: list[str] = [r.backend for r in self._routes if r.kind in (kind, "*")]
        if not (self._default == "kubernetes" and kind != "kubernetes"):
            names.append(self._default)
        return sorted({name for name in names if name in self._backends})

    def backend_name(self, kind: Kind, target: str) -> str | None:
        """The name of the backend for ``kind``/``target``; ``None`` when none is configured."""
        lowered = target.lower()
        for route in self._routes:
            if route.kind in (kind, "*") and fnmatch.fnmatchcase(lowered, route.pattern.lower()):
                return route.backend
        if self._default == "kubernetes" and kind != "kubernetes":
            return None
        return self._default if self._default in self._backends else None

    def choose(self, kind: Kind, target: str) -> CredentialBackend | None:
        """The backend for ``kind``/``target``; ``None`` when none is configured."""
        name = self.backend_name(kind, target)
        return None if name is None else self._backends[name]

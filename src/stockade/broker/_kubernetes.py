"""The ``kubernetes`` backend: a TokenRequest for a configured service account per request.

The request and response shapes (``authentication.k8s.io/v1`` ``TokenRequest``) are pure
functions, tested without I/O; the HTTP call sits in :class:`TokenRequestClient`, a thin httpx
adapter whose exceptions are mapped here to :class:`SecretsBackendUnavailable`.
"""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from stockade.core.errors import ConfigError, NotFound, SecretsBackendUnavailable
from stockade.core.settings import BrokerKubernetesSettings

from ._routing import validate_user
from ._types import Credential, CredentialQuery, Kind

__all__ = [
    "KubernetesBackend",
    "TokenRequestClient",
    "parse_token_response",
    "token_request_body",
    "token_request_path",
]

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")


def token_request_path(namespace: str, service_account: str) -> str:
    """``/api/v1/namespaces/{ns}/serviceaccounts/{name}/token``; names are checked as
    Kubernetes names (DNS label / subdomain) and raise :class:`NotFound` otherwise."""
    if not _DNS_LABEL.fullmatch(namespace):
        raise NotFound("namespace", namespace)
    if not _DNS_SUBDOMAIN.fullmatch(service_account):
        raise NotFound("service account", service_account)
    return (
        f"/api/v1/namespaces/{quote(namespace, safe='')}"
        f"/serviceaccounts/{quote(service_account, safe='')}/token"
    )


def token_request_body(*, audiences: Sequence[str], expiration_seconds: int) -> dict[str, Any]:
    """The ``TokenRequest`` sent to the API server."""
    spec: dict[str, Any] = {"expirationSeconds": expiration_seconds}
    if audiences:
        spec["audiences"] = list(audiences)
    return {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}


def parse_token_response(doc: Any) -> Credential:
    """The token and expiry of a ``TokenRequest`` answer; raises SecretsBackendUnavailable."""
    status = doc.get("status") if isinstance(doc, dict) else None
    if not isinstance(status, dict):
        raise SecretsBackendUnavailable("Kubernetes TokenRequest answer has no status")
    token = status.get("token")
    expires = status.get("expirationTimestamp")
    if not isinstance(token, str) or not token or not isinstance(expires, str):
        raise SecretsBackendUnavailable("Kubernetes TokenRequest answer lacks token or expiry")
    try:
        moment = datetime.fromisoformat(expires.replace("Z", "+00:00"))
    except ValueError as exc:
        raise SecretsBackendUnavailable(
            "Kubernetes TokenRequest answer has a malformed expirationTimestamp"
        ) from exc
    if moment.utcoffset() is None:
        raise SecretsBackendUnavailable("Kubernetes TokenRequest expiry lacks a time zone")
    return Credential(username="", secret=token, expires_at=moment)


class TokenRequestClient:
    """The HTTP edge: POST a JSON body with the broker's own bearer token."""

    def __init__(self, base_url: str, *, ca_file: Path | None, timeout: float) -> None:
        verify: ssl.SSLContext | bool = True
        if ca_file is not None:
            verify = ssl.create_default_context(cafile=str(ca_file))
        self._client = httpx.AsyncClient(base_url=base_url, verify=verify, timeout=timeout)

    async def post(self, path: str, body: dict[str, Any], *, bearer: str) -> tuple[int, Any]:
        """The status and decoded JSON (``None`` when not JSON) of one POST."""
        try:
            response = await self._client.post(
                path, json=body, headers={"Authorization": f"Bearer {bearer}"}
            )
        except httpx.HTTPError as exc:
            raise SecretsBackendUnavailable(
                f"cannot reach the Kubernetes API ({type(exc).__name__})"
            ) from exc
        try:
            return response.status_code, response.json()
        except ValueError:
            return response.status_code, None

    async def aclose(self) -> None:
        await self._client.aclose()


def _api_url(settings: BrokerKubernetesSettings) -> str:
    if settings.api_url:
        return settings.api_url.rstrip("/")
    host = os.environ.get("KUBERNETES_SERVICE_HOST")
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        raise ConfigError(
            "broker.kubernetes.api_url is unset and KUBERNETES_SERVICE_HOST is not in the "
            "environment: set STOCKADE_BROKER__KUBERNETES__API_URL"
        )
    if ":" in host:
        host = f"[{host}]"
    return f"https://{host}:{port}"


class KubernetesBackend:
    """Issues a short-lived service account token per ``kubernetes`` credential request.

    ``namespace`` and ``service_account`` may use ``{user}`` and ``{cluster}``; the broker's own
    token is read from ``token_file`` at every request (projected tokens rotate).
    """

    name = "kubernetes"

    def __init__(
        self,
        settings: BrokerKubernetesSettings,
        *,
        client: TokenRequestClient | None = None,
    ) -> None:
        for setting, template in (
            ("namespace", settings.namespace),
            ("service_account", settings.service_account),
        ):
            try:
                template.format_map({"user": "u", "cluster": "c"})
            except (KeyError, ValueError, IndexError) as exc:
                raise ConfigError(
                    f"broker.kubernetes.{setting}: {template!r} may use only {{user}} and "
                    "{cluster}"
                ) from exc
        if client is None and settings.ca_file is not None and not settings.ca_file.is_file():
            raise ConfigError(
                f"broker.kubernetes.ca_file {settings.ca_file} does not exist: set "
                "STOCKADE_BROKER__KUBERNETES__CA_FILE to the API server's CA bundle"
            )
        self._settings = settings
        self._client = client or TokenRequestClient(
            _api_url(settings), ca_file=settings.ca_file, timeout=settings.timeout
        )

    def __repr__(self) -> str:
        return f"<KubernetesBackend {self._settings.namespace}/{self._settings.service_account}>"

    def _bearer(self) -> str:
        try:
            token = self._settings.token_file.read_text().strip()
        except OSError as exc:
            raise SecretsBackendUnavailable(
                f"cannot read broker.kubernetes.token_file {self._settings.token_file}: "
                f"{exc.strerror}"
            ) from exc
        if not token:
            raise SecretsBackendUnavailable(
                f"broker.kubernetes.token_file {self._settings.token_file} is empty"
            )
        return token

    async def get(self, query: CredentialQuery) -> Credential:
        """A fresh token for the query's service account; NotFound when it does not exist."""
        if query.kind != "kubernetes":
            raise NotFound("credential", f"{query.kind}/{query.target}")
        values = {"user": validate_user(query.user).lower(), "cluster": query.target.lower()}
        path = token_request_path(
            self._settings.namespace.format_map(values),
            self._settings.service_account.format_map(values),
        )
        body = token_request_body(
            audiences=self._settings.audiences,
            expiration_seconds=self._settings.expiration_seconds,
        )
        status, doc = await self._client.post(path, body, bearer=self._bearer())
        if status in (200, 201):
            return parse_token_response(doc)
        if status == 404:
            raise NotFound("service account", path.split("/serviceaccounts/")[1][: -len("/token")])
        if status in (401, 403):
            raise SecretsBackendUnavailable(
                f"the Kubernetes API refused the broker's TokenRequest (HTTP {status}); "
                "grant it create on serviceaccounts/token"
            )
        raise SecretsBackendUnavailable(f"the Kubernetes API answered HTTP {status}")

    async def list_targets(self, *, user: str, kind: Kind) -> dict[str, str]:
        """Nothing to list: tokens are minted on request."""
        return {}

    async def aclose(self) -> None:
        await self._client.aclose()

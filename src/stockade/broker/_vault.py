"""The ``vault`` backend: credentials read from Vault or OpenBao KV v2 over its HTTP API.

Paths come from templates in :class:`~stockade.core.settings.VaultSettings` (documented
defaults ``secret/data/stockade/{user}/git/{host}``, ``.../docker/{registry}``,
``.../kubernetes/{cluster}``). One async httpx client per backend keeps its connections to Vault
alive between requests; nothing is cached but the login token: every credential is read from
Vault when it is asked for. Every httpx exception and every Vault error status is mapped here, by
:func:`map_vault_error`, to :class:`~stockade.core.errors.SecretsBackendUnavailable`.
"""

from __future__ import annotations

import asyncio
import ssl
import string
from datetime import datetime
from typing import Any

import httpx

from stockade.core.errors import ConfigError, NotFound, SecretsBackendUnavailable, StockadeError
from stockade.core.logging import get_logger
from stockade.core.settings import VaultSettings

from ._routing import validate_user
from ._types import Credential, CredentialQuery, Kind

__all__ = ["MAX_LISTED", "PLACEHOLDERS", "VaultBackend", "VaultStatusError", "map_vault_error"]

_log = get_logger("stockade.broker.vault")

#: Placeholders each path template may use (``{user}`` is always allowed).
PLACEHOLDERS: dict[Kind, frozenset[str]] = {
    "git": frozenset({"user", "host"}),
    "docker": frozenset({"user", "registry"}),
    "kubernetes": frozenset({"user", "cluster"}),
}
_TARGET_FIELD: dict[Kind, str] = {"git": "host", "docker": "registry", "kubernetes": "cluster"}
_SECRET_FIELD: dict[Kind, str] = {"git": "password", "docker": "secret", "kubernetes": "token"}
#: At most this many entries are read for one ``list`` (``docker-credential-* list``).
MAX_LISTED = 200
#: Largest Vault answer read (a KV secret, a listing).
MAX_RESPONSE_BYTES = 1 << 20


class VaultStatusError(Exception):
    """Vault answered an HTTP error status (never carries the response body)."""

    def __init__(self, status: int) -> None:
        super().__init__(f"Vault answered HTTP {status}")
        self.status = status


#: Vault's error statuses and what each means for the caller.
_STATUS_MESSAGES: dict[int, str] = {
    400: "Vault rejected the request as invalid",
    401: "Vault rejected the broker's login (unauthorized)",
    403: "Vault denied the broker access; check the broker's Vault policy",
    404: "Vault has no such path",
    405: "Vault does not support the operation",
    412: "Vault precondition failed (namespace or consistency)",
    429: "Vault rate limit exceeded",
    500: "Vault internal error",
    501: "Vault is not initialized",
    502: "Vault answered bad gateway",
    503: "Vault is sealed or down",
}

#: httpx's exception classes and what each means, most specific first.
_HTTPX_ERRORS: dict[type[BaseException], str] = {
    httpx.ConnectTimeout: "Vault did not answer in time",
    httpx.ConnectError: "cannot connect to Vault",
    httpx.TimeoutException: "Vault did not answer in time",
    httpx.RemoteProtocolError: "Vault broke the HTTP protocol",
    httpx.NetworkError: "the connection to Vault failed",
    httpx.TooManyRedirects: "Vault redirected too often",
    httpx.HTTPError: "HTTP request to Vault failed",
    httpx.InvalidURL: "vault.addr is not a valid URL",
    httpx.CookieConflict: "Vault set conflicting cookies",
    httpx.StreamError: "the HTTP stream to Vault was misused",
    ValueError: "Vault answered with malformed data",
}


def _tls_failure(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def map_vault_error(exc: BaseException, *, addr: str) -> SecretsBackendUnavailable:
    """The :class:`SecretsBackendUnavailable` for ``exc`` from httpx or a Vault status.

    The message names what failed and how to fix it; the library's own text (which may quote
    request URLs) is not copied into it.
    """
    if isinstance(exc, VaultStatusError):
        message = _STATUS_MESSAGES.get(exc.status, f"Vault answered HTTP {exc.status}")
        return SecretsBackendUnavailable(f"{message} ({addr})")
    if _tls_failure(exc):
        return SecretsBackendUnavailable(f"TLS to Vault failed; set vault.ca_cert ({addr})")
    for cls, message in _HTTPX_ERRORS.items():
        if isinstance(exc, cls):
            return SecretsBackendUnavailable(f"{message} ({addr})")
    return SecretsBackendUnavailable(f"Vault call failed: {type(exc).__name__} ({addr})")


def _template_fields(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


def _check_template(kind: Kind, template: str) -> str:
    setting = f"vault.{kind}_path"
    try:
        fields = _template_fields(template)
    except ValueError as exc:
        raise ConfigError(f"{setting}: malformed template {template!r}: {exc}") from exc
    unknown = fields - PLACEHOLDERS[kind]
    if unknown:
        raise ConfigError(
            f"{setting}: unknown placeholder {{{sorted(unknown)[0]}}} in {template!r}; "
            f"use {', '.join('{' + p + '}' for p in sorted(PLACEHOLDERS[kind]))}"
        )
    if _TARGET_FIELD[kind] not in fields:
        raise ConfigError(
            f"{setting}: {template!r} must contain {{{_TARGET_FIELD[kind]}}} "
            "so targets do not share one secret"
        )
    if template.startswith("/") or "//" in template:
        raise ConfigError(f"{setting}: {template!r} must be a relative path without '//'")
    return template


def _list_path(template: str, kind: Kind) -> str | None:
    """The KV v2 metadata folder listing a template's targets, when the target is its last
    segment (``secret/data/stockade/{user}/docker/{registry}``); else ``None``."""
    head, sep, tail = template.rpartition("/")
    if not sep or tail != "{" + _TARGET_FIELD[kind] + "}":
        return None
    mount, data, rest = head.partition("/data/")
    if not data:
        return None
    return f"{mount}/metadata/{rest}"


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.utcoffset() is not None else None


class VaultBackend:
    """Reads credentials from Vault / OpenBao KV v2.

    Options are validated once, here: an unknown placeholder, a missing AppRole id or Kubernetes
    role is a :class:`ConfigError` naming the setting. Login happens on first use and again
    once when Vault answers 403 (an expired AppRole or Kubernetes login token). ``connections``
    bounds the kept-alive connections to Vault.
    """

    name = "vault"

    def __init__(self, settings: VaultSettings, *, connections: int = 32) -> None:
        if not settings.addr:
            raise ConfigError("vault.addr is unset: set VAULT_ADDR to enable the vault backend")
        self._settings = settings
        self._addr = settings.addr.rstrip("/")
        self._templates: dict[Kind, str] = {
            "git": _check_template("git", settings.git_path),
            "docker": _check_template("docker", settings.docker_path),
            "kubernetes": _check_template("kubernetes", settings.kubernetes_path),
        }
        method = settings.auth_method
        if method == "token" and settings.token is None:
            raise ConfigError(
                "vault.token is unset: set VAULT_TOKEN (or choose another auth_method)"
            )
        if method == "approle" and not (settings.approle_role_id and settings.approle_secret_id):
            raise ConfigError(
                "vault.approle_role_id and vault.approle_secret_id are needed for AppRole auth"
            )
        if method == "kubernetes" and not settings.kubernetes_role:
            raise ConfigError("vault.kubernetes_role is needed for Kubernetes auth")
        if not self._addr.startswith(("http://", "https://")):
            raise ConfigError(f"vault.addr must be an http(s) URL, got {self._addr!r}")
        verify: ssl.SSLContext | bool = True
        if settings.ca_cert is not None:
            try:
                verify = ssl.create_default_context(cafile=str(settings.ca_cert))
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"vault.ca_cert {settings.ca_cert}: {exc}") from exc
        headers = {"X-Vault-Request": "true"}
        if settings.namespace:
            headers["X-Vault-Namespace"] = settings.namespace
        self._client = httpx.AsyncClient(
            base_url=self._addr,
            verify=verify,
            timeout=settings.timeout,
            headers=headers,
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
            trust_env=False,
            follow_redirects=False,
        )
        self._login_lock = asyncio.Lock()
        self._token: str | None = None
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else self._settings.auth_method
        return f"<VaultBackend {self._addr} {state}>"

    # -- HTTP --------------------------------------------------------------------------------

    async def _send(
        self, method: str, path: str, *, token: str | None, body: dict[str, Any] | None = None
    ) -> tuple[int, Any]:
        """One request to ``/v1/<path>``: the status and the decoded JSON body (None if empty)."""
        headers = {"X-Vault-Token": token} if token else None
        try:
            response = await self._client.request(method, f"/v1/{path}", headers=headers, json=body)
            raw = response.content
            if len(raw) > MAX_RESPONSE_BYTES:
                raise ValueError("response too large")
            return response.status_code, (response.json() if raw.strip() else None)
        except StockadeError:
            raise
        except Exception as exc:
            raise map_vault_error(exc, addr=self._addr) from exc

    # -- login -------------------------------------------------------------------------------

    async def _login(self, *, stale: str | None = None) -> str:
        """The Vault token to use; logs in again when the current one is ``stale``."""
        async with self._login_lock:
            if self._token is not None and self._token != stale:
                return self._token
            settings = self._settings
            if settings.auth_method == "token":
                assert settings.token is not None
                self._token = settings.token.get_secret_value()
                return self._token
            if settings.auth_method == "approle":
                assert settings.approle_secret_id is not None
                mount = settings.approle_mount
                body = {
                    "role_id": settings.approle_role_id,
                    "secret_id": settings.approle_secret_id.get_secret_value(),
                }
            else:
                try:
                    jwt = settings.kubernetes_jwt_file.read_text().strip()
                except OSError as exc:
                    raise SecretsBackendUnavailable(
                        f"cannot read vault.kubernetes_jwt_file {settings.kubernetes_jwt_file}: "
                        f"{exc.strerror}"
                    ) from exc
                mount = settings.kubernetes_mount
                body = {"role": settings.kubernetes_role, "jwt": jwt}
            status, doc = await self._send("POST", f"auth/{mount}/login", token=None, body=body)
            if status != 200:
                raise map_vault_error(VaultStatusError(status), addr=self._addr)
            auth = doc.get("auth") if isinstance(doc, dict) else None
            token = auth.get("client_token") if isinstance(auth, dict) else None
            if not isinstance(token, str) or not token:
                raise SecretsBackendUnavailable(
                    f"Vault answered a login without a client token ({self._addr})"
                )
            self._token = token
            return token

    async def _call(self, method: str, path: str) -> Any:
        """``method`` on ``path`` logged in: the JSON body, or None for a 404. After a 403 with
        a login method, logs in again once."""
        if self._closed:
            raise SecretsBackendUnavailable("the vault backend is closed")
        token = await self._login()
        status, doc = await self._send(method, path, token=token)
        if status == 403 and self._settings.auth_method != "token":
            _log.info("vault_relogin", addr=self._addr)
            token = await self._login(stale=token)
            status, doc = await self._send(method, path, token=token)
        if status == 404:
            return None
        if status != 200:
            raise map_vault_error(VaultStatusError(status), addr=self._addr)
        return doc

    # -- reading -----------------------------------------------------------------------------

    def path_for(self, query: CredentialQuery) -> str:
        """The Vault path of ``query`` (its target is already normalized by the caller)."""
        values = {"user": validate_user(query.user), _TARGET_FIELD[query.kind]: query.target}
        return self._templates[query.kind].format_map(values)

    @staticmethod
    def _fields(response: Any, path: str) -> dict[str, Any] | None:
        if response is None:
            return None
        if not isinstance(response, dict) or not isinstance(response.get("data"), dict):
            raise SecretsBackendUnavailable(f"Vault answered malformed data for {path}")
        data = response["data"]
        if "metadata" in data and "data" in data:  # KV v2
            inner = data["data"]
            if inner is None:  # the latest version is deleted
                return None
            if not isinstance(inner, dict):
                raise SecretsBackendUnavailable(f"Vault answered malformed data for {path}")
            return dict(inner)
        return dict(data)  # KV v1

    async def get(self, query: CredentialQuery) -> Credential:
        """The credential stored for ``query``; raises NotFound or SecretsBackendUnavailable."""
        path = self.path_for(query)
        fields = self._fields(await self._call("GET", path), path)
        if fields is None:
            raise NotFound("credential", f"{query.kind}/{query.target}")
        secret_field = _SECRET_FIELD[query.kind]
        secret = fields.get(secret_field)
        if not isinstance(secret, str) or not secret:
            raise SecretsBackendUnavailable(
                f"the secret at {path} has no string field {secret_field!r}"
            )
        username = fields.get("username", "")
        if not isinstance(username, str):
            raise SecretsBackendUnavailable(f"the secret at {path} has a non-string username")
        return Credential(
            username=username,
            secret=secret,
            expires_at=_parse_time(fields.get("expiration_timestamp")),
        )

    async def list_targets(self, *, user: str, kind: Kind) -> dict[str, str]:
        """Targets of ``kind`` stored for ``user`` with their user names (at most
        :data:`MAX_LISTED`); empty when the template's target is not its last segment."""
        template = _list_path(self._templates[kind], kind)
        if template is None:
            return {}
        folder = template.format_map({"user": validate_user(user)})
        listing = await self._call("LIST", folder)
        if not isinstance(listing, dict):
            return {}
        data = listing.get("data")
        keys = data.get("keys", []) if isinstance(data, dict) else []
        if not isinstance(keys, list):
            raise SecretsBackendUnavailable(f"Vault answered a malformed listing for {folder}")
        found: dict[str, str] = {}
        for key in keys[:MAX_LISTED]:
            if not isinstance(key, str) or key.endswith("/"):
                continue
            path = self._templates[kind].format_map({"user": user, _TARGET_FIELD[kind]: key})
            fields = self._fields(await self._call("GET", path), path)
            if fields is not None:
                username = fields.get("username", "")
                found[key] = username if isinstance(username, str) else ""
        return found

    async def aclose(self) -> None:
        """Close the connections to Vault."""
        if self._closed:
            return
        self._closed = True
        await self._client.aclose()

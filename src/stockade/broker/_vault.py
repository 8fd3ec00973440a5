"""The ``vault`` backend: credentials read from Vault or OpenBao KV v2 with hvac.

Paths come from templates in :class:`~stockade.core.settings.VaultSettings` (documented
defaults ``secret/data/stockade/{user}/git/{host}``, ``.../docker/{registry}``,
``.../kubernetes/{cluster}``). hvac is synchronous: its calls run in this backend's own small
thread pool. Every hvac and ``requests`` exception is mapped here, by :func:`map_vault_error`,
to :class:`~stockade.core.errors.SecretsBackendUnavailable`; nothing from hvac leaves this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import string
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, TypeVar

import hvac
import hvac.exceptions
import requests

from stockade.core.errors import ConfigError, NotFound, SecretsBackendUnavailable, StockadeError
from stockade.core.logging import get_logger
from stockade.core.settings import VaultSettings

from ._routing import validate_user
from ._types import Credential, CredentialQuery, Kind

__all__ = ["MAX_LISTED", "PLACEHOLDERS", "VaultBackend", "map_vault_error"]

_T = TypeVar("_T")
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

#: hvac's exception classes and what each means for the caller, most specific first.
_VAULT_ERRORS: dict[type[BaseException], str] = {
    hvac.exceptions.InvalidPath: "Vault has no such path",
    hvac.exceptions.Unauthorized: "Vault rejected the broker's login (unauthorized)",
    hvac.exceptions.Forbidden: "Vault denied the broker access; check the broker's Vault policy",
    hvac.exceptions.VaultDown: "Vault is sealed or down",
    hvac.exceptions.VaultNotInitialized: "Vault is not initialized",
    hvac.exceptions.RateLimitExceeded: "Vault rate limit exceeded",
    hvac.exceptions.InternalServerError: "Vault internal error",
    hvac.exceptions.BadGateway: "Vault answered bad gateway",
    hvac.exceptions.InvalidRequest: "Vault rejected the request as invalid",
    hvac.exceptions.ParamValidationError: "Vault rejected the request parameters",
    hvac.exceptions.PreconditionFailed: "Vault precondition failed (namespace or consistency)",
    hvac.exceptions.UnsupportedOperation: "Vault does not support the operation",
    hvac.exceptions.UnexpectedError: "Vault answered unexpectedly",
    hvac.exceptions.VaultError: "Vault error",
    requests.exceptions.SSLError: "TLS to Vault failed; set vault.ca_cert",
    requests.exceptions.ConnectionError: "cannot connect to Vault",
    requests.exceptions.Timeout: "Vault did not answer in time",
    requests.exceptions.RequestException: "HTTP request to Vault failed",
    ValueError: "Vault answered with malformed data",
}


def map_vault_error(exc: BaseException, *, addr: str) -> SecretsBackendUnavailable:
    """The :class:`SecretsBackendUnavailable` for ``exc`` from hvac or requests.

    The message names what failed and how to fix it; hvac's own text (which may quote request
    URLs) is not copied into it.
    """
    for cls, message in _VAULT_ERRORS.items():
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
    once when Vault answers 403 (an expired AppRole or Kubernetes login token).
    """

    name = "vault"

    def __init__(self, settings: VaultSettings, *, workers: int = 8) -> None:
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
        self._client = hvac.Client(
            url=self._addr,
            verify=str(settings.ca_cert) if settings.ca_cert else True,
            timeout=settings.timeout,
            namespace=settings.namespace,
        )
        self._login_lock = threading.Lock()
        self._logged_in = False
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="stockade-vault")
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else self._settings.auth_method
        return f"<VaultBackend {self._addr} {state}>"

    # -- login -------------------------------------------------------------------------------

    def _login(self, *, force: bool = False) -> None:
        with self._login_lock:
            if self._logged_in and not force:
                return
            settings = self._settings
            if settings.auth_method == "token":
                assert settings.token is not None
                self._client.token = settings.token.get_secret_value()
            elif settings.auth_method == "approle":
                assert settings.approle_secret_id is not None
                self._client.auth.approle.login(
                    role_id=settings.approle_role_id,
                    secret_id=settings.approle_secret_id.get_secret_value(),
                    mount_point=settings.approle_mount,
                )
            else:
                try:
                    jwt = settings.kubernetes_jwt_file.read_text().strip()
                except OSError as exc:
                    raise SecretsBackendUnavailable(
                        f"cannot read vault.kubernetes_jwt_file {settings.kubernetes_jwt_file}: "
                        f"{exc.strerror}"
                    ) from exc
                self._client.auth.kubernetes.login(
                    role=settings.kubernetes_role, jwt=jwt, mount_point=settings.kubernetes_mount
                )
            self._logged_in = True

    @contextlib.contextmanager
    def _mapped(self) -> Iterator[None]:
        try:
            yield
        except StockadeError:
            raise
        except Exception as exc:
            raise map_vault_error(exc, addr=self._addr) from exc

    def _call(self, func: Callable[[], _T]) -> _T:
        """Run ``func`` logged in; after a 403 with a login method, log in again once."""
        with self._mapped():
            self._login()
            try:
                return func()
            except hvac.exceptions.Forbidden:
                if self._settings.auth_method == "token":
                    raise
                _log.info("vault_relogin", addr=self._addr)
                self._login(force=True)
                return func()

    async def _run(self, func: Callable[[], _T]) -> _T:
        if self._closed:
            raise SecretsBackendUnavailable("the vault backend is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._call, func)

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
        fields = self._fields(await self._run(lambda: self._client.read(path)), path)
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
        target_template = self._templates[kind]

        def read_all() -> dict[str, str]:
            listing = self._client.list(folder)
            if not listing:
                return {}
            keys = listing.get("data", {}).get("keys", []) if isinstance(listing, dict) else []
            found: dict[str, str] = {}
            for key in keys[:MAX_LISTED]:
                if not isinstance(key, str) or key.endswith("/"):
                    continue
                path = target_template.format_map({"user": user, _TARGET_FIELD[kind]: key})
                fields = self._fields(self._client.read(path), path)
                if fields is not None:
                    username = fields.get("username", "")
                    found[key] = username if isinstance(username, str) else ""
            return found

        return await self._run(read_all)

    async def aclose(self) -> None:
        """Release the thread pool and the HTTP session."""
        if self._closed:
            return
        self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)
        await asyncio.to_thread(self._client.adapter.close)

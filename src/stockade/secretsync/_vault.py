"""Reading KV secrets from Vault/OpenBao, logged in with the controller's projected token.

The controller never holds a static Vault token: :class:`VaultReader` logs in through the JWT
auth method (:func:`stockade.tls.vault_jwt_login`) with the projected token file, keeps the
client token in memory until its lease nears its end or Vault answers 403, then logs in again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx

from stockade.core import SecretsBackendUnavailable, StockadeError
from stockade.tls import ProjectedToken, vault_jwt_login

__all__ = ["SecretPathMissing", "VaultReader"]


class SecretPathMissing(StockadeError):
    """Nothing is stored at the VaultSecret's mount and path (or that version)."""


class VaultReader:
    """KV v1/v2 reads at ``addr`` as the JWT-auth ``role``."""

    def __init__(
        self,
        addr: str,
        *,
        role: str,
        token: ProjectedToken,
        auth_mount: str = "jwt",
        verify: str | bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._addr = addr.rstrip("/")
        self._role = role
        self._token_file = token
        self._auth_mount = auth_mount
        self._http = httpx.AsyncClient(timeout=10.0, verify=verify)
        self._clock = clock
        self._vault_token: str | None = None
        self._expires = 0.0
        self.logins = 0

    def __repr__(self) -> str:
        return f"<VaultReader {self._addr} role={self._role} token=[secure]>"

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _login(self) -> str:
        token, lease = await vault_jwt_login(
            self._addr,
            role=self._role,
            token=self._token_file,
            mount=self._auth_mount,
            http=self._http,
        )
        self.logins += 1
        self._vault_token = token
        self._expires = self._clock() + (lease * 0.8 if lease else 300)
        return token

    async def read(
        self, mount: str, path: str, *, kv: str, version: int | None = None
    ) -> dict[str, str]:
        """The key/value pairs at ``mount``/``path`` (``kv`` is ``kv-v1`` or ``kv-v2``).

        Raises :class:`SecretPathMissing` when nothing is there, and
        :class:`SecretsBackendUnavailable` when Vault cannot be asked.
        """
        if kv == "kv-v2":
            url = f"{self._addr}/v1/{mount}/data/{path}"
            params = {"version": str(version)} if version else None
        else:
            url = f"{self._addr}/v1/{mount}/{path}"
            params = None
        for attempt in (1, 2):
            token = self._vault_token
            if token is None or self._clock() >= self._expires:
                token = await self._login()
            try:
                response = await self._http.get(
                    url, params=params, headers={"X-Vault-Token": token}
                )
            except httpx.HTTPError as exc:
                raise SecretsBackendUnavailable(f"vault read at {url} failed: {exc}") from None
            if response.status_code == 403 and attempt == 1:
                self._vault_token = None  # revoked or expired early: log in once more
                continue
            break
        if response.status_code == 404:
            raise SecretPathMissing(f"no secret at {mount}/{path}")
        if response.status_code != 200:
            raise SecretsBackendUnavailable(
                f"vault read at {mount}/{path} refused: HTTP {response.status_code}"
            )
        body: Any = response.json().get("data") or {}
        if kv == "kv-v2":
            if (body.get("metadata") or {}).get("deletion_time"):
                raise SecretPathMissing(f"the secret at {mount}/{path} is deleted")
            body = body.get("data")
        if not isinstance(body, dict):
            raise SecretPathMissing(f"no key/value data at {mount}/{path}")
        return {str(k): v if isinstance(v, str) else _json(v) for k, v in body.items()}


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True)

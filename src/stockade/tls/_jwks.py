"""An issuer's JSON Web Key Set, fetched and cached: keys by ``kid``, refreshed (at most once
per ``min_refresh`` seconds) when a token names a ``kid`` not seen yet, so a caller inventing
``kid`` values cannot make us hammer the issuer.

Keys come from ``jwks_url`` when configured, else from the issuer's OIDC discovery document
(``<issuer>/.well-known/openid-configuration`` → ``jwks_uri``, whose ``issuer`` must match, and
which must be ``https``, plain ``http`` only on a loopback host: keys fetched in clear text could
be swapped on the way). Answers are read in chunks, at most :data:`MAX_DOCUMENT` bytes within
:data:`FETCH_DEADLINE` seconds.
Shared by projected service-account tokens and OIDC ID tokens.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import time
import urllib.parse
from collections.abc import Callable

import httpx
import jwt

from stockade.core import BackendError, get_logger

__all__ = ["JwksCache"]

log = get_logger("stockade.tls.jwks")

#: The largest JWKS or discovery document accepted.
MAX_DOCUMENT = 1 << 20
#: Longest wait for one whole document (a read timeout alone lets a server that dribbles a
#: byte at a time hold the verification forever).
FETCH_DEADLINE = 15.0


def _over_tls(url: str) -> bool:
    """``url`` is https, or http on a loopback host."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme == "https" and host:
        return True
    if parts.scheme != "http":
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class JwksCache:
    """The keys of ``issuer`` (see the module docstring). ``clock`` returns Unix seconds."""

    def __init__(
        self,
        *,
        issuer: str,
        jwks_url: str | None = None,
        http: httpx.AsyncClient | None = None,
        min_refresh: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.issuer = issuer
        self._jwks_url = jwks_url
        self._http = http or httpx.AsyncClient(timeout=5.0)
        self._owns_http = http is None
        self._min_refresh = min_refresh
        self._clock = clock
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        self._lock = asyncio.Lock()
        self.fetches = 0

    def __repr__(self) -> str:
        return f"<JwksCache iss={self.issuer} keys={len(self._keys)}>"

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def _get_json(self, url: str) -> object:
        content = bytearray()
        try:
            async with asyncio.timeout(FETCH_DEADLINE):
                async with self._http.stream(
                    "GET", url, headers={"Accept-Encoding": "identity"}
                ) as response:
                    response.raise_for_status()
                    if response.headers.get("content-encoding", "identity").lower() != "identity":
                        raise ValueError(f"{url} answered a compressed body")  # never inflated
                    async for chunk in response.aiter_raw():
                        content += chunk
                        if len(content) > MAX_DOCUMENT:
                            raise ValueError(f"{url} answered more than {MAX_DOCUMENT} bytes")
        except TimeoutError:
            raise ValueError(f"{url} answered too slowly") from None
        return json.loads(bytes(content))

    async def _jwks_uri(self) -> str:
        if self._jwks_url:
            return self._jwks_url
        url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
        doc = await self._get_json(url)
        if not isinstance(doc, dict) or doc.get("issuer") != self.issuer:
            raise BackendError(f"OIDC discovery at {url} does not name issuer {self.issuer}")
        uri = doc.get("jwks_uri")
        if not isinstance(uri, str) or not uri:
            raise BackendError(f"OIDC discovery at {url} has no jwks_uri")
        if not _over_tls(uri):
            log.warning("jwks.refused", issuer=self.issuer, reason="jwks_uri not https")
            raise BackendError(f"OIDC discovery at {url}: jwks_uri must be https")
        return uri

    async def refresh(self) -> None:
        """Fetch the issuer's JWKS now (raises :class:`BackendError` when unreachable)."""
        try:
            uri = await self._jwks_uri()
            doc = await self._get_json(uri)
            if not isinstance(doc, dict):
                raise ValueError("the JWKS is not a JSON object")
            keyset = jwt.PyJWKSet.from_dict(doc)
        except (httpx.HTTPError, ValueError, jwt.PyJWKSetError) as exc:
            raise BackendError(f"cannot fetch the JWKS of {self.issuer}: {exc}") from None
        finally:
            self._fetched_at = self._clock()
        self.fetches += 1
        self._keys = {key.key_id: key for key in keyset.keys if key.key_id}
        log.info("jwks.fetched", issuer=self.issuer, keys=sorted(self._keys))

    async def key(self, kid: str) -> jwt.PyJWK | None:
        """The key named ``kid``; refreshes the set first when ``kid`` is new (rate-limited).
        None when the issuer has no such key; :class:`BackendError` when it cannot be asked."""
        key = self._keys.get(kid)
        if key is not None:
            return key
        async with self._lock:
            key = self._keys.get(kid)
            if key is not None:
                return key
            recent = (
                self._fetched_at is not None
                and self._clock() - self._fetched_at < self._min_refresh
            )
            if not recent:
                await self.refresh()
        return self._keys.get(kid)

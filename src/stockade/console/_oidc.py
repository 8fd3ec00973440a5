"""Console sign-in with the configured OIDC provider: the authorization-code flow with PKCE.

``GET /console/oidc/start`` makes a ``state``, a ``nonce`` and a PKCE verifier (RFC 7636,
``S256``), keeps them in this process's memory under the SHA-256 of a fresh random value set
as a short-lived cookie (:data:`FLOW_COOKIE`: ``Secure; HttpOnly; SameSite=Lax``, path
``/console/oidc``, :data:`FLOW_TTL`), and redirects to the provider's
``authorization_endpoint`` (from its discovery document). ``GET /console/oidc/callback`` takes
the pending sign-in of that cookie out of memory (a second callback finds nothing), compares
``state`` in constant time, exchanges the ``code`` with the verifier at the ``token_endpoint``
and hands the ID token and the expected nonce to identity's ``login_oidc``, which verifies it and
maps the provider's groups to roles. The console session is then opened exactly as for a
one-time code (roles, ``console.view`` decided by policy and so audited).

Provider endpoints must be ``https`` (plain ``http`` only on a loopback host) without a
fragment; provider answers are read in chunks, at most 256 KiB within
:data:`RESPONSE_DEADLINE` seconds, and never decompressed. Nothing secret
(code, verifier, tokens) is logged; the ``redirect_uri`` is built from the request's own origin,
and the provider checks it against the client's registered ones.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import json
import re
import secrets
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from stockade.core.errors import StockadeError, TokenRejected
from stockade.core.logging import get_logger
from stockade.core.settings import OidcSettings
from stockade.identity import OidcLogin

__all__ = [
    "FLOW_COOKIE",
    "FLOW_TTL",
    "MAX_PENDING",
    "MAX_PENDING_PER_SOURCE",
    "OidcSignIn",
    "OidcSignInError",
]

_log = get_logger("stockade.console.oidc")

#: The cookie that binds a browser to its pending sign-in.
FLOW_COOKIE = "stockade_console_oidc"
#: Seconds between /oidc/start and the callback.
FLOW_TTL = 300.0
#: Most sign-ins under way in all; past it the oldest is dropped (no refusal for everyone).
MAX_PENDING = 10_000
#: Most sign-ins under way from one client address; past it that client's oldest is dropped.
MAX_PENDING_PER_SOURCE = 16
_MAX_PARAM = 2048
_MAX_RESPONSE = 256 * 1024
#: Longest wait for one whole answer of the provider (a read timeout alone lets a provider
#: that dribbles a byte at a time hold the request forever).
RESPONSE_DEADLINE = 30.0
_ERROR_CODE = re.compile(r"[a-z_]{1,64}")

LoginOidc = Callable[..., Awaitable[OidcLogin]]


class OidcSignInError(Exception):
    """A refused sign-in: ``message`` is what the browser is told (no secret in it)."""

    def __init__(self, message: str, *, status: int = 403) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True)
class _Pending:
    state: str
    nonce: str
    verifier: str
    redirect_uri: str
    expires: float
    source: str

    def __repr__(self) -> str:
        return f"<pending OIDC sign-in expires={self.expires:.0f}>"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _challenge(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _endpoint(url: object, field: str) -> str:
    # RFC 6749 §3.1: no fragment (the state, nonce and PKCE challenge would land in it)
    if isinstance(url, str) and url.isprintable() and len(url) <= _MAX_PARAM and "#" not in url:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        if (parts.scheme == "https" and host) or (parts.scheme == "http" and _loopback(host)):
            return url
    raise OidcSignInError(f"the provider's {field} is not an https URL", status=503)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _TooLarge(Exception):
    pass


async def _request(
    http: httpx.AsyncClient, method: str, url: str, *, form: dict[str, str] | None = None
) -> tuple[int, Any]:
    """The status and JSON body (None when it is not JSON) of one provider answer, read in
    chunks: at most ``_MAX_RESPONSE`` bytes within :data:`RESPONSE_DEADLINE` seconds; else
    :class:`OidcSignInError` (503)."""
    try:
        async with asyncio.timeout(RESPONSE_DEADLINE):
            async with http.stream(
                method,
                url,
                data=form,
                headers={"Accept": "application/json", "Accept-Encoding": "identity"},
            ) as response:
                if response.headers.get("content-encoding", "identity").lower() != "identity":
                    raise _TooLarge  # never decompressed: it can expand a thousandfold
                content = bytearray()
                async for chunk in response.aiter_raw():
                    content += chunk
                    if len(content) > _MAX_RESPONSE:
                        raise _TooLarge
    except (httpx.HTTPError, TimeoutError, _TooLarge) as exc:
        _log.warning("oidc_provider_failed", error=type(exc).__name__)
        raise OidcSignInError("the OIDC provider did not answer", status=503) from None
    try:
        body = json.loads(bytes(content))
    except ValueError:
        body = None
    return response.status_code, body


def _source_key(source: str) -> str:
    """The client an address counts for: an IPv6 address by its /64 (one host commonly owns a
    whole /64, so counting single addresses would let it past the per-client cap)."""
    try:
        address = ipaddress.ip_address(source)
    except ValueError:
        return source
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class OidcSignIn:
    """Pending code-flow sign-ins and the calls to the provider (see the module docstring).

    ``login`` is identity's ``login_oidc`` (the service or its gRPC client).
    """

    def __init__(
        self,
        settings: OidcSettings,
        *,
        login: LoginOidc,
        http: httpx.AsyncClient | None = None,
        ttl: float = FLOW_TTL,
    ) -> None:
        if not settings.enabled or not settings.issuer or not settings.client_id:
            raise ValueError("identity.oidc must be enabled with issuer and client_id")
        self.issuer: str = settings.issuer
        self.client_id: str = settings.client_id
        self._login = login
        self._http = http or httpx.AsyncClient(timeout=10.0, follow_redirects=False)
        self._ttl = ttl
        self._pending: dict[str, _Pending] = {}
        self._endpoints: tuple[str, str] | None = None

    def __repr__(self) -> str:
        return f"<OidcSignIn iss={self.issuer} pending={len(self._pending)}>"

    async def _discover(self) -> tuple[str, str]:
        if self._endpoints is not None:
            return self._endpoints
        url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
        _endpoint(url, "issuer")
        _status, document = await _request(self._http, "GET", url)
        if not isinstance(document, dict) or document.get("issuer") != self.issuer:
            raise OidcSignInError("the OIDC provider's discovery document is wrong", status=503)
        self._endpoints = (
            _endpoint(document.get("authorization_endpoint"), "authorization_endpoint"),
            _endpoint(document.get("token_endpoint"), "token_endpoint"),
        )
        return self._endpoints

    async def start(self, redirect_uri: str, *, source: str = "") -> tuple[str, str]:
        """A new pending sign-in: the flow cookie's value and the provider URL to redirect to.

        Anyone may start one, so memory is bounded without refusing everyone: past
        :data:`MAX_PENDING_PER_SOURCE` from one client address (``source``) its oldest goes,
        past :data:`MAX_PENDING` in all the oldest goes.
        """
        authorize, _token = await self._discover()
        source = _source_key(source)
        now = time.time()
        self._pending = {k: p for k, p in self._pending.items() if p.expires > now}
        mine = [k for k, p in self._pending.items() if p.source == source]
        for key in mine[: max(0, len(mine) - MAX_PENDING_PER_SOURCE + 1)]:
            del self._pending[key]
        while len(self._pending) >= MAX_PENDING:
            del self._pending[next(iter(self._pending))]
        cookie = secrets.token_urlsafe(32)
        pending = _Pending(
            state=secrets.token_urlsafe(32),
            nonce=secrets.token_urlsafe(32),
            verifier=secrets.token_urlsafe(48),  # 64 characters: RFC 7636 allows 43-128
            redirect_uri=redirect_uri,
            expires=now + self._ttl,
            source=source,
        )
        self._pending[_digest(cookie)] = pending
        query = urllib.parse.urlencode(
            {
                "response_type": "code",
                "client_id": self.client_id,
                "redirect_uri": redirect_uri,
                "scope": "openid profile email",
                "state": pending.state,
                "nonce": pending.nonce,
                "code_challenge": _challenge(pending.verifier),
                "code_challenge_method": "S256",
            }
        )
        separator = "&" if urllib.parse.urlsplit(authorize).query else "?"
        return cookie, authorize + separator + query

    async def finish(self, cookie: str | None, params: dict[str, str]) -> OidcLogin:
        """The login of the callback with query ``params`` for the browser with ``cookie``;
        :class:`OidcSignInError` when anything does not match (the pending sign-in is spent
        either way)."""
        pending = (
            self._pending.pop(_digest(cookie), None)
            if cookie and len(cookie) <= _MAX_PARAM
            else None
        )
        if pending is None or pending.expires <= time.time():
            raise OidcSignInError("this sign-in expired or was not started in this browser")
        state = params.get("state", "")
        if not hmac.compare_digest(state.encode(), pending.state.encode()):
            _log.warning("console_oidc_refused", reason="bad_state")
            raise OidcSignInError("this sign-in does not match the one started here")
        if "error" in params:
            error = params["error"] if _ERROR_CODE.fullmatch(params["error"]) else "error"
            raise OidcSignInError(f"the provider refused the sign-in: {error}")
        code = params.get("code", "")
        if not code or len(code) > _MAX_PARAM:
            raise OidcSignInError("the provider sent no code")
        id_token = await self._exchange(code, pending)
        try:
            return await self._login(id_token, nonce=pending.nonce)
        except TokenRejected as exc:
            _log.warning("console_oidc_refused", reason=exc.reason)
            raise OidcSignInError(f"sign-in refused: {exc.reason}") from None
        except StockadeError as exc:
            _log.warning("console_oidc_refused", reason=type(exc).__name__)
            raise OidcSignInError("sign-in refused") from None

    async def _exchange(self, code: str, pending: _Pending) -> str:
        _authorize, token_url = await self._discover()
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": pending.redirect_uri,
            "client_id": self.client_id,
            "code_verifier": pending.verifier,
        }
        status, body = await _request(self._http, "POST", token_url, form=form)
        id_token = body.get("id_token") if isinstance(body, dict) else None
        if status != 200 or not isinstance(id_token, str) or not id_token:
            _log.warning("console_oidc_refused", reason="token_endpoint", status=status)
            raise OidcSignInError("the provider did not accept the sign-in code")
        return id_token

    async def aclose(self) -> None:
        await self._http.aclose()

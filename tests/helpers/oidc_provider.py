"""A small OIDC provider on loopback for tests: discovery, JWKS, the device-code flow (RFC 8628)
and the authorization-code flow with PKCE (RFC 7636).

It signs ID tokens with the keys of :class:`tls.jwks.Issuer` and runs a real HTTP server on
127.0.0.1 (a thread). Tests script what the token endpoint answers to each poll of a device
code (``device_script``: ``"pending"``, ``"slow_down"``, ``"denied"``, ``"expired"``, ``"ok"``)
and read back what it was sent (``device_requests``, ``token_requests``).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import secrets
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from tls.jwks import Issuer

CLIENT_ID = "stockade-cli"

_ANSWERS = {
    "pending": (400, {"error": "authorization_pending"}),
    "slow_down": (400, {"error": "slow_down"}),
    "denied": (400, {"error": "access_denied"}),
    "expired": (400, {"error": "expired_token"}),
}


@dataclass
class DeviceGrant:
    device_code: str
    user_code: str
    scope: str
    script: list[str]
    polls: int = 0
    done: bool = False


@dataclass
class CodeGrant:
    client_id: str
    redirect_uri: str
    nonce: str | None
    challenge: str
    method: str
    used: bool = False


@dataclass
class OidcProvider:
    """The provider's state; ``claims`` are the ID token's claims (overrides; None drops)."""

    issuer: Issuer
    client_id: str = CLIENT_ID
    claims: dict[str, Any] = field(default_factory=dict)
    device_script: list[str] = field(default_factory=lambda: ["ok"])
    interval: int | None = 1
    expires_in: int = 600
    device_enabled: bool = True
    device_extra: dict[str, Any] = field(default_factory=dict)
    """Fields merged into the device endpoint's answer (hostile values)."""
    discovery_extra: dict[str, Any] = field(default_factory=dict)
    """Fields merged into the discovery document (None drops one)."""
    forced_claims: dict[str, Any] = field(default_factory=dict)
    """Claims set last in every ID token, over what the flow put there (a wrong nonce)."""
    grants: dict[str, DeviceGrant] = field(default_factory=dict)
    codes: dict[str, CodeGrant] = field(default_factory=dict)
    device_requests: list[dict[str, str]] = field(default_factory=list)
    token_requests: list[dict[str, str]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.issuer.url

    def id_token(self, **claims: Any) -> str:
        kid = self.issuer.published[0]
        now = int(time.time())
        body: dict[str, Any] = {
            "iss": self.issuer.url,
            "sub": "a1b2c3",
            "aud": self.client_id,
            "iat": now,
            "exp": now + 300,
            "preferred_username": "olga",
            "email": "olga@example.org",
            "email_verified": True,
            "groups": ["platform-admins", "everyone"],
        }
        body.update(self.claims)
        body.update(claims)
        body.update(self.forced_claims)
        body = {k: v for k, v in body.items() if v is not None}
        return jwt.encode(body, self.issuer.keys[kid], algorithm="ES256", headers={"kid": kid})

    def discovery(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "issuer": self.url,
            "jwks_uri": self.url + "/jwks.json",
            "authorization_endpoint": self.url + "/authorize",
            "token_endpoint": self.url + "/token",
            "response_types_supported": ["code"],
            "code_challenge_methods_supported": ["S256"],
        }
        if self.device_enabled:
            doc["device_authorization_endpoint"] = self.url + "/device"
        doc.update(self.discovery_extra)
        return {k: v for k, v in doc.items() if v is not None}

    # -- device flow ----------------------------------------------------------------------

    def _device(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        self.device_requests.append(form)
        if form.get("client_id") != self.client_id:
            return 401, {"error": "invalid_client"}
        grant = DeviceGrant(
            device_code=secrets.token_urlsafe(24),
            user_code="WDJB-MJHT",
            scope=form.get("scope", ""),
            script=list(self.device_script),
        )
        self.grants[grant.device_code] = grant
        body: dict[str, Any] = {
            "device_code": grant.device_code,
            "user_code": grant.user_code,
            "verification_uri": self.url + "/activate",
            "verification_uri_complete": self.url + "/activate?user_code=" + grant.user_code,
            "expires_in": self.expires_in,
        }
        if self.interval is not None:
            body["interval"] = self.interval
        body.update(self.device_extra)
        return 200, body

    def _device_token(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        grant = self.grants.get(form.get("device_code", ""))
        if grant is None or grant.done or form.get("client_id") != self.client_id:
            return 400, {"error": "invalid_grant"}
        grant.polls += 1
        step = grant.script.pop(0) if grant.script else "pending"
        if step != "ok":
            if step in {"denied", "expired"}:
                grant.done = True
            return _ANSWERS[step]
        grant.done = True
        return 200, self._tokens(nonce=None)

    def _tokens(self, *, nonce: str | None) -> dict[str, Any]:
        return {
            "access_token": secrets.token_urlsafe(16),
            "token_type": "Bearer",
            "expires_in": 300,
            "id_token": self.id_token(nonce=nonce),
        }

    # -- authorization-code flow ----------------------------------------------------------

    def authorize(self, query: dict[str, str]) -> str:
        """The redirect the provider answers ``/authorize`` with once the user approved."""
        redirect = query.get("redirect_uri", "")
        code = secrets.token_urlsafe(24)
        self.codes[code] = CodeGrant(
            client_id=query.get("client_id", ""),
            redirect_uri=redirect,
            nonce=query.get("nonce"),
            challenge=query.get("code_challenge", ""),
            method=query.get("code_challenge_method", ""),
        )
        answer = {"code": code, "state": query.get("state", "")}
        return redirect + ("&" if "?" in redirect else "?") + urllib.parse.urlencode(answer)

    def _code_token(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        grant = self.codes.get(form.get("code", ""))
        if grant is None or grant.used:
            return 400, {"error": "invalid_grant"}
        grant.used = True
        verifier = form.get("code_verifier", "")
        expected = (
            base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
            .rstrip(b"=")
            .decode()
        )
        if (
            grant.method != "S256"
            or expected != grant.challenge
            or form.get("redirect_uri") != grant.redirect_uri
            or form.get("client_id") != grant.client_id
        ):
            return 400, {"error": "invalid_grant"}
        return 200, self._tokens(nonce=grant.nonce)

    def _token(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        self.token_requests.append(form)
        grant_type = form.get("grant_type")
        if grant_type == "urn:ietf:params:oauth:grant-type:device_code":
            return self._device_token(form)
        if grant_type == "authorization_code":
            return self._code_token(form)
        return 400, {"error": "unsupported_grant_type"}


@contextlib.contextmanager
def serve_provider(**options: Any) -> Iterator[OidcProvider]:
    """An :class:`OidcProvider` with one published key, served on a free loopback port."""
    provider = OidcProvider(issuer=Issuer(), **options)

    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            parts = urllib.parse.urlsplit(self.path)
            if parts.path == "/.well-known/openid-configuration":
                self._send(200, provider.discovery())
            elif parts.path == "/jwks.json":
                provider.issuer.jwks_fetches += 1
                self._send(200, provider.issuer.jwks())
            elif parts.path == "/authorize":
                query = dict(urllib.parse.parse_qsl(parts.query))
                self.send_response(302)
                self.send_header("Location", provider.authorize(query))
                self.send_header("Content-Length", "0")
                self.end_headers()
            else:
                self.send_error(404)

        def do_POST(self) -> None:
            length = min(int(self.headers.get("Content-Length") or 0), 1 << 16)
            form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
            path = urllib.parse.urlsplit(self.path).path
            if path == "/device" and provider.device_enabled:
                self._send(*provider._device(form))
            elif path == "/token":
                self._send(*provider._token(form))
            else:
                self.send_error(404)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    provider.issuer.url = f"http://127.0.0.1:{server.server_address[1]}"
    provider.issuer.add_key()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield provider
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

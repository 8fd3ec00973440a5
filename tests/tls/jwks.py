"""A loopback OIDC issuer for tests: mints projected-token-shaped JWTs and serves its JWKS.

:class:`Issuer` signs with ES256 keys it generates; :func:`serve_issuer` runs a real HTTP server
on 127.0.0.1 (a thread) answering ``/.well-known/openid-configuration`` and ``/jwks.json``, and
counts JWKS fetches so tests can see the cache and the rate-limited refresh.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec


@dataclass
class Issuer:
    """Signing keys (``kid`` -> key) and the keys published in the JWKS."""

    url: str = ""
    keys: dict[str, ec.EllipticCurvePrivateKey] = field(default_factory=dict)
    published: list[str] = field(default_factory=list)
    jwks_fetches: int = 0

    def add_key(self, *, publish: bool = True) -> str:
        kid = uuid.uuid4().hex[:16]
        self.keys[kid] = ec.generate_private_key(ec.SECP256R1())
        if publish:
            self.published.append(kid)
        return kid

    def jwks(self) -> dict[str, Any]:
        out = []
        for kid in self.published:
            jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.keys[kid].public_key()))
            jwk.update({"kid": kid, "use": "sig", "alg": "ES256"})
            out.append(jwk)
        return {"keys": out}

    def token(
        self,
        *,
        audience: str | list[str] = "stockade-identity",
        namespace: str = "stockade",
        service_account: str = "stockade-gateway",
        kid: str | None = None,
        issuer: str | None = None,
        lifetime: float = 600,
        not_before: float | None = None,
        now: float | None = None,
        **extra: Any,
    ) -> str:
        """A token shaped like kubelet's projected service-account token."""
        kid = kid or self.published[0]
        now = time.time() if now is None else now
        claims: dict[str, Any] = {
            "iss": issuer or self.url,
            "sub": f"system:serviceaccount:{namespace}:{service_account}",
            "aud": audience,
            "iat": int(now),
            "nbf": int(now if not_before is None else not_before),
            "exp": int(now + lifetime),
            "kubernetes.io": {
                "namespace": namespace,
                "serviceaccount": {"name": service_account, "uid": str(uuid.uuid4())},
                "pod": {"name": f"{service_account}-7d9f-abcde", "uid": str(uuid.uuid4())},
            },
        }
        claims.update(extra)
        return jwt.encode(claims, self.keys[kid], algorithm="ES256", headers={"kid": kid})


@contextlib.contextmanager
def serve_issuer() -> Iterator[Issuer]:
    """An :class:`Issuer` with one published key, served on a free loopback port."""
    issuer = Issuer()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/.well-known/openid-configuration":
                body = {"issuer": issuer.url, "jwks_uri": issuer.url + "/jwks.json"}
            elif self.path == "/jwks.json":
                issuer.jwks_fetches += 1
                body = issuer.jwks()
            else:
                self.send_error(404)
                return
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    issuer.url = f"http://127.0.0.1:{server.server_address[1]}"
    issuer.add_key()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield issuer
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

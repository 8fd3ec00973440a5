"""Service-to-service identity: Kubernetes projected service-account tokens, verified.

A caller presents the projected token kubelet wrote for it (audience: the callee); the callee
checks, in this order, and rejects with the first failed check as the ``reason``:

=====================  =====================  ==============================================
reason                 gRPC status            check
=====================  =====================  ==============================================
``no-token``           UNAUTHENTICATED        a bearer token was presented at all
``malformed``          UNAUTHENTICATED        it parses as a JWS with an allowed algorithm
``unknown-key``        UNAUTHENTICATED        its ``kid`` is in the issuer's JWKS (refreshed
                                              once, rate-limited, when the ``kid`` is new)
``bad-signature``      UNAUTHENTICATED        it verifies with that key (foreign-signed fails)
``wrong-issuer``       UNAUTHENTICATED        ``iss`` is the configured issuer
``wrong-audience``     UNAUTHENTICATED        ``aud`` names this service
``expired``            UNAUTHENTICATED        ``exp`` is in the future (with ``leeway``)
``not-yet-valid``      UNAUTHENTICATED        ``nbf`` is in the past (with ``leeway``)
``not-a-service``      UNAUTHENTICATED        the ``kubernetes.io`` claim names a namespace and
                                              service account, matching ``sub``
``wrong-namespace``    PERMISSION_DENIED      the namespace is the one this release runs in
``wrong-service``      PERMISSION_DENIED      the service account is one the allow-list knows
``method-not-allowed`` PERMISSION_DENIED      the allow-list lets it call this method
=====================  =====================  ==============================================

Keys come from ``jwks_url`` when configured, else from the issuer's OIDC discovery document
(``<issuer>/.well-known/openid-configuration`` → ``jwks_uri``), fetched with httpx.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any

import httpx
import jwt

from stockade.core import (
    BackendError,
    InvalidInput,
    SecretsBackendUnavailable,
    TokenRejected,
    get_logger,
)
from stockade.core.settings import ServiceTokenSettings

from ._jwks import JwksCache

__all__ = [
    "MethodAllowList",
    "ProjectedToken",
    "RejectionStatus",
    "ServiceIdentity",
    "ServiceTokenRejected",
    "ServiceTokenVerifier",
    "load_allow_list",
    "vault_jwt_login",
]

log = get_logger("stockade.tls.service_token")

#: Asymmetric algorithms a projected token may use (kube-apiserver signs RS256 or ES256).
ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "ES384", "PS256", "EdDSA")


class RejectionStatus(Enum):
    """Which gRPC status a rejection maps to (names match ``grpc.StatusCode``)."""

    UNAUTHENTICATED = "UNAUTHENTICATED"
    PERMISSION_DENIED = "PERMISSION_DENIED"


_DENIED = {"wrong-namespace", "wrong-service", "method-not-allowed"}


class ServiceTokenRejected(TokenRejected):
    """A service token failed one check; ``reason`` names it, ``status`` is the gRPC mapping."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason, detail)
        self.status = (
            RejectionStatus.PERMISSION_DENIED
            if reason in _DENIED
            else RejectionStatus.UNAUTHENTICATED
        )


@dataclass(frozen=True)
class ServiceIdentity:
    """Who called: the verified namespace and service account of a projected token."""

    namespace: str
    service_account: str
    pod: str | None = None
    #: Wall-clock second (``exp`` plus the verifier's leeway) after which the token that proved
    #: this identity is no longer accepted: a stream admitted once must not outlive it.
    expires: float | None = field(default=None, compare=False)

    @property
    def name(self) -> str:
        """``namespace/service-account``, the form the allow-list uses."""
        return f"{self.namespace}/{self.service_account}"


class MethodAllowList:
    """Which service accounts may call which gRPC methods.

    Keys are full method names (``/stockade.identity.v1.Identity/OpenSession``) or a service
    with ``*`` (``/grpc.health.v1.Health/*``); values are service-account names in this
    release's namespace. A method not listed is allowed to nobody.
    """

    def __init__(self, rules: Mapping[str, Collection[str]]) -> None:
        for method in rules:
            if not method.startswith("/") or method.count("/") != 2:
                raise InvalidInput(
                    "allow-list", f"{method!r} is not a gRPC method name (/package.Service/Method)"
                )
        self._rules = {method: frozenset(accounts) for method, accounts in rules.items()}
        self.accounts = frozenset(a for accounts in self._rules.values() for a in accounts)

    def allows(self, method: str, service_account: str) -> bool:
        """Whether ``service_account`` may call ``method``: a rule naming the method decides
        alone (so ``VerifyToken: [broker]`` narrows a service-wide ``*``), else the ``*`` rule."""
        exact = self._rules.get(method)
        if exact is not None:
            return service_account in exact
        service = method.rsplit("/", 1)[0] + "/*"
        return service_account in self._rules.get(service, frozenset())


def load_allow_list(path: Path, service: str) -> tuple[str, MethodAllowList]:
    """``(audience, allow-list)`` of ``service`` from the chart's ``service-auth.json``.

    The file maps each callee to ``{"audience": str, "allow": {method: [service accounts]}}``;
    a service the file does not name gets an empty allow-list (every call refused).
    Raises :class:`InvalidInput` naming the file and the bad entry.
    """
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidInput(str(path), f"cannot read the service allow-lists: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidInput(str(path), "must be a JSON object of callee -> rules")
    entry = doc.get(service, {"audience": f"stockade-{service}", "allow": {}})
    audience, rules = (
        (entry.get("audience"), entry.get("allow")) if isinstance(entry, dict) else (None, None)
    )
    if not isinstance(audience, str) or not isinstance(rules, dict):
        raise InvalidInput(f"{path}: {service}", "needs an audience string and an allow object")
    for method, accounts in rules.items():
        if not isinstance(accounts, list) or not all(isinstance(a, str) for a in accounts):
            raise InvalidInput(f"{path}: {service}: {method}", "must list service-account names")
    return audience, MethodAllowList(rules)


class ServiceTokenVerifier:
    """Verifies projected service-account tokens for one callee.

    ``audience`` is this service's name as callers request it in their token projection;
    ``namespace`` the release namespace; ``allow`` the per-method allow-list. ``min_refresh``
    is the shortest interval between two JWKS fetches triggered by an unknown ``kid`` (so a
    caller with random ``kid`` values cannot make us hammer the issuer). ``clock`` returns
    Unix seconds (tests move it).
    """

    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        namespace: str,
        allow: MethodAllowList,
        jwks_url: str | None = None,
        http: httpx.AsyncClient | None = None,
        leeway: float = 5.0,
        min_refresh: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not issuer:
            raise InvalidInput("issuer", "the token issuer must be set")
        if not audience:
            raise InvalidInput("audience", "the service's audience must be set")
        self.issuer = issuer
        self.audience = audience
        self.namespace = namespace
        self.allow = allow
        self._jwks = JwksCache(
            issuer=issuer, jwks_url=jwks_url, http=http, min_refresh=min_refresh, clock=clock
        )
        self._leeway = leeway
        self._clock = clock

    def __repr__(self) -> str:
        return f"<ServiceTokenVerifier aud={self.audience} iss={self.issuer}>"

    @classmethod
    def from_settings(cls, settings: ServiceTokenSettings, service: str) -> ServiceTokenVerifier:
        """The verifier of ``service`` (``identity``, ``authz``, ...) from the settings tree."""
        audience, allow = load_allow_list(settings.allow_file, service)
        return cls(
            issuer=settings.issuer,
            audience=settings.audience or audience,
            namespace=settings.namespace,
            allow=allow,
            jwks_url=settings.jwks_url,
            min_refresh=settings.min_refresh,
        )

    @property
    def fetches(self) -> int:
        """How many times the issuer's JWKS was fetched."""
        return self._jwks.fetches

    async def aclose(self) -> None:
        await self._jwks.aclose()

    async def refresh(self) -> None:
        """Fetch the issuer's JWKS now (raises :class:`BackendError` when unreachable)."""
        await self._jwks.refresh()

    async def _key(self, kid: str) -> jwt.PyJWK:
        try:
            key = await self._jwks.key(kid)
        except BackendError as exc:
            raise ServiceTokenRejected("unknown-key", str(exc)) from None
        if key is None:
            raise ServiceTokenRejected("unknown-key", f"no key {kid!r} in the issuer's JWKS")
        return key

    async def verify(self, token: str | None, method: str) -> ServiceIdentity:
        """The caller's identity, or :class:`ServiceTokenRejected` naming the failed check."""
        if not token:
            raise ServiceTokenRejected("no-token", "present a projected service-account token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise ServiceTokenRejected("malformed", "not a JWS") from None
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in ALGORITHMS:
            raise ServiceTokenRejected("malformed", f"algorithm {alg!r} is not accepted")
        if not isinstance(kid, str) or not kid:
            raise ServiceTokenRejected("malformed", "the token header has no kid")
        key = await self._key(kid)
        if key.algorithm_name and alg != key.algorithm_name:
            raise ServiceTokenRejected(
                "malformed", f"algorithm {alg} does not match key {kid!r} ({key.algorithm_name})"
            )
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key.key,
                algorithms=[str(alg)],
                options={"verify_exp": False, "verify_nbf": False, "verify_iat": False,
                         "verify_aud": False, "verify_iss": False},
            )  # fmt: skip
        except jwt.InvalidSignatureError:
            raise ServiceTokenRejected("bad-signature", f"key {kid!r} does not verify it") from None
        except jwt.InvalidTokenError as exc:
            raise ServiceTokenRejected("malformed", str(exc)) from None
        return self._check_claims(claims, method)

    def _check_claims(self, claims: Mapping[str, Any], method: str) -> ServiceIdentity:
        if claims.get("iss") != self.issuer:
            raise ServiceTokenRejected("wrong-issuer", f"iss is not {self.issuer}")
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if self.audience not in audiences:
            raise ServiceTokenRejected("wrong-audience", f"aud does not name {self.audience}")
        now = self._clock()
        exp, nbf = claims.get("exp"), claims.get("nbf")
        if not isinstance(exp, int | float):
            raise ServiceTokenRejected("expired", "the token has no exp")
        if now > exp + self._leeway:
            raise ServiceTokenRejected("expired", f"exp {int(exp)} is past")
        if nbf is not None and (not isinstance(nbf, int | float) or now + self._leeway < nbf):
            raise ServiceTokenRejected("not-yet-valid", f"nbf {nbf} is ahead")
        caller = _service_of(claims)
        if caller.namespace != self.namespace:
            raise ServiceTokenRejected(
                "wrong-namespace", f"namespace {caller.namespace!r} is not {self.namespace!r}"
            )
        if caller.service_account not in self.allow.accounts:
            raise ServiceTokenRejected(
                "wrong-service", f"service account {caller.service_account!r} calls nothing here"
            )
        if not self.allow.allows(method, caller.service_account):
            raise ServiceTokenRejected(
                "method-not-allowed", f"{caller.service_account} may not call {method}"
            )
        return replace(caller, expires=float(exp) + self._leeway)


def _service_of(claims: Mapping[str, Any]) -> ServiceIdentity:
    k8s = claims.get("kubernetes.io")
    if not isinstance(k8s, dict):
        raise ServiceTokenRejected("not-a-service", "no kubernetes.io claim")
    namespace = k8s.get("namespace")
    account = k8s.get("serviceaccount")
    name = account.get("name") if isinstance(account, dict) else None
    if not isinstance(namespace, str) or not isinstance(name, str):
        raise ServiceTokenRejected("not-a-service", "kubernetes.io names no service account")
    if claims.get("sub") != f"system:serviceaccount:{namespace}:{name}":
        raise ServiceTokenRejected("not-a-service", "sub does not match kubernetes.io")
    pod = k8s.get("pod")
    pod_name = pod.get("name") if isinstance(pod, dict) else None
    return ServiceIdentity(
        namespace=namespace,
        service_account=name,
        pod=pod_name if isinstance(pod_name, str) else None,
    )


class ProjectedToken:
    """A projected token file (kubelet rewrites it before it expires): read on every use."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __repr__(self) -> str:
        return f"<ProjectedToken {self.path}>"

    def read(self) -> str:
        """The current token; :class:`InvalidInput` naming the file when missing or empty."""
        try:
            token = self.path.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidInput(str(self.path), f"cannot read the service token: {exc}") from None
        if not token:
            raise InvalidInput(str(self.path), "the service token file is empty")
        return token


async def vault_jwt_login(
    addr: str,
    *,
    role: str,
    token: ProjectedToken,
    mount: str = "jwt",
    http: httpx.AsyncClient | None = None,
    verify: str | bool = True,
) -> tuple[str, float]:
    """Log in to Vault/OpenBao's JWT auth method with a projected token.

    Returns ``(client_token, lease_seconds)``. The JWT travels in the request body only.
    Raises :class:`SecretsBackendUnavailable` when Vault is unreachable or refuses the login.
    """
    client = http or httpx.AsyncClient(timeout=10.0, verify=verify)
    try:
        response = await client.post(
            f"{addr.rstrip('/')}/v1/auth/{mount}/login", json={"role": role, "jwt": token.read()}
        )
    except httpx.HTTPError as exc:
        raise SecretsBackendUnavailable(f"vault login at {addr} failed: {exc}") from None
    finally:
        if http is None:
            await client.aclose()
    if response.status_code != 200:
        errors = response.json().get("errors", []) if _is_json(response) else []
        raise SecretsBackendUnavailable(
            f"vault refused the {mount} login for role {role!r}: HTTP {response.status_code}"
            + (f" ({'; '.join(str(e) for e in errors)[:200]})" if errors else "")
        )
    auth = response.json().get("auth") or {}
    client_token = auth.get("client_token")
    if not isinstance(client_token, str) or not client_token:
        raise SecretsBackendUnavailable(f"vault at {addr} returned no client token")
    return client_token, float(auth.get("lease_duration") or 0)


def _is_json(response: httpx.Response) -> bool:
    return str(response.headers.get("content-type", "")).startswith("application/json")

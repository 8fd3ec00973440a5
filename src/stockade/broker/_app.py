"""The broker's HTTP API: session token, then policy, then backend, then an audit event.

Every credential request goes through :meth:`_Broker.fetch`:

1. the bearer token is verified by identity (signature, ``iss``, ``aud``, ``exp``, ``kid``, live
   session) — else **401** with the reason;
2. authz decides ``credential.get`` on ``{kind, name: target, owner: user}`` — else **403**;
3. the backend chosen by the routing table answers — **404** when it stores nothing,
   **503** when it is down or slow (never a stale or cached secret);
4. a :class:`~stockade.core.events.CredentialRequest` goes on the bus (who, kind, target,
   decision, backend latency — never the secret). When ``audit_required`` and it cannot be
   published, the credential is withheld (503).

Errors are :class:`ErrorBody` JSON everywhere, including validation errors (422, without echoing
the input) and unknown routes.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Annotated, Any

import pydantic_core
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import stockade
from stockade.authz import Context, Resource, Subject, build_input
from stockade.core.errors import (
    InvalidInput,
    NotFound,
    PermissionDenied,
    SecretsBackendUnavailable,
    StockadeError,
    TokenRejected,
)
from stockade.core.events import CredentialRequest
from stockade.core.logging import escape_peer, get_logger
from stockade.core.settings import BrokerSettings

from ._models import (
    DockerCredential,
    DockerCredentialList,
    DockerCredentialRequest,
    DockerListRequest,
    ErrorBody,
    GitCredential,
    GitCredentialRequest,
    KubernetesCredential,
    KubernetesCredentialRequest,
)
from ._routing import Router, normalize_host, normalize_registry, validate_cluster_server
from ._types import (
    KINDS,
    SESSION_STATE,
    AuditSearcher,
    ClaimsLike,
    Credential,
    CredentialBackend,
    CredentialQuery,
    EventPublisher,
    Kind,
    PolicyDecider,
    SessionBinding,
    TokenVerifier,
)

__all__ = ["ACTION", "AUDIT_ACTION", "BodyLimit", "create_app"]

_log = get_logger("stockade.broker")

#: The authz action of every credential request.
ACTION = "credential.get"
#: The authz action of an audit search (roles admin and auditor in the shipped policy).
AUDIT_ACTION = "audit.search"
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_BEARER = HTTPBearer(auto_error=False, description="The session JWT ($STOCKADE_TOKEN).")
_Bearer = Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "Unreadable request body"},
    401: {"model": ErrorBody, "description": "Missing, expired, revoked or forged token"},
    403: {"model": ErrorBody, "description": "Denied by policy"},
    404: {"model": ErrorBody, "description": "No credential stored for the target"},
    413: {"model": ErrorBody, "description": "Request body too large"},
    422: {"model": ErrorBody, "description": "Malformed request"},
    503: {"model": ErrorBody, "description": "Secrets backend or audit unavailable"},
}


def _error(status: int, error: str, reason: str, message: str) -> JSONResponse:
    headers = dict(_NO_STORE)
    if status == 401:
        headers["WWW-Authenticate"] = f'Bearer error="invalid_token", error_description="{reason}"'
    body = ErrorBody(error=error, reason=reason, message=message)
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def _error_for(exc: StockadeError) -> JSONResponse:
    if isinstance(exc, TokenRejected):
        return _error(401, "token_rejected", exc.reason, str(exc))
    if isinstance(exc, PermissionDenied):
        return _error(403, "denied", "; ".join(exc.reasons) or "no rule allowed it", str(exc))
    if isinstance(exc, NotFound):
        return _error(404, "not_found", f"no {exc.name} stored", str(exc))
    if isinstance(exc, InvalidInput):
        return _error(422, "invalid_input", exc.field, str(exc))
    # BackendError and anything else Stockade raised on purpose: a dependency cannot answer now.
    return _error(503, "unavailable", str(exc), str(exc))  # our own message: says what to fix


class BodyLimit:
    """ASGI middleware: bodies over ``limit`` bytes answer 413 before the app reads them."""

    def __init__(self, app: ASGIApp, *, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and (not value.isdigit() or int(value) > self.limit):
                await _error(413, "too_large", "body", f"body over {self.limit} bytes")(
                    scope, receive, send
                )
                return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise StarletteHTTPException(413, f"body over {self.limit} bytes")
            return message

        await self.app(scope, limited, send)


class _Broker:
    """The request pipeline, independent of HTTP framing."""

    def __init__(
        self,
        *,
        identity: TokenVerifier,
        authz: PolicyDecider,
        router: Router,
        publisher: EventPublisher | None,
        settings: BrokerSettings,
    ) -> None:
        self.identity = identity
        self.authz = authz
        self.router = router
        self.publisher = publisher
        self.settings = settings

    async def authenticate(
        self, bearer: HTTPAuthorizationCredentials | None, request: Request
    ) -> ClaimsLike:
        """The caller's claims: its per-session socket's session (no token needed; a token sent
        anyway is ignored), else the bearer token's."""
        state = request.scope.get("state")
        binding = state.get(SESSION_STATE) if isinstance(state, dict) else None
        if binding is not None:
            bound: SessionBinding = binding
            return await bound.authenticate(audience=self.settings.audience)
        if bearer is None or not bearer.credentials:
            raise TokenRejected("missing", "send Authorization: Bearer $STOCKADE_TOKEN")
        if len(bearer.credentials) > 8192:
            raise TokenRejected("malformed", "token too long")
        return await self.identity.verify_token(bearer.credentials, audience=self.settings.audience)

    def still_live(self, claims: ClaimsLike, request: Request) -> None:
        """Raise TokenRejected when, since ``claims`` were checked, the bus said their session
        ended or was killed (or its per-session socket closed): no secret leaves after a kill
        that arrived while the request waited for policy, backend or audit."""
        state = request.scope.get("state")
        binding = state.get(SESSION_STATE) if isinstance(state, dict) else None
        is_dead = getattr(self.identity, "is_dead", None)
        if getattr(binding, "ended", False) or (callable(is_dead) and is_dead(claims.sid)):
            raise TokenRejected("session_ended", "the session ended while its request was served")

    async def authorize(
        self, claims: ClaimsLike, kind: Kind, target: str, source_ip: str | None
    ) -> None:
        subject = Subject(name=claims.sub, roles=claims.roles, groups=claims.groups)
        doc = build_input(
            ACTION,
            Resource(kind=kind, name=target, owner=claims.sub),
            Context(
                user=subject,
                source_ip=source_ip,
                auth_method="session_token",
                session_id=claims.sid,
            ),
        )
        answer = self.authz.decide(doc)
        decision = await answer if inspect.isawaitable(answer) else answer
        if not decision.allow:
            raise PermissionDenied(ACTION, list(decision.reasons))

    async def authorize_audit(self, claims: ClaimsLike, source_ip: str | None) -> None:
        subject = Subject(name=claims.sub, roles=claims.roles, groups=claims.groups)
        doc = build_input(
            AUDIT_ACTION,
            Resource(kind="audit", name="events"),
            Context(
                user=subject,
                source_ip=source_ip,
                auth_method="token",
                session_id=claims.sid,
            ),
        )
        answer = self.authz.decide(doc)
        decision = await answer if inspect.isawaitable(answer) else answer
        if not decision.allow:
            raise PermissionDenied(AUDIT_ACTION, list(decision.reasons))

    async def audit(
        self,
        *,
        claims: ClaimsLike | None,
        kind: Kind,
        target: str,
        allow: bool,
        reason: str,
        backend_ms: float,
        required: bool,
    ) -> None:
        event = CredentialRequest(
            username=claims.sub if claims else "",
            session_id=(claims.sid or "") if claims else "",
            kind=kind,
            target=target,
            allow=allow,
            reason=reason[:256],
            backend_ms=round(backend_ms, 3),
        )
        _log.info(
            "credential_request",
            user=event.username,
            session_id=event.session_id,
            kind=kind,
            target=escape_peer(target),
            allow=allow,
            reason=reason,
            backend_ms=event.backend_ms,
        )
        if self.publisher is None:
            if required and self.settings.audit_required:
                raise SecretsBackendUnavailable("audit unavailable: no event bus connected")
            return
        try:
            await asyncio.wait_for(self.publisher.publish(event), timeout=5.0)
        except (StockadeError, TimeoutError) as exc:
            _log.warning("credential_audit_failed", error=str(exc) or type(exc).__name__)
            if required and self.settings.audit_required:
                raise SecretsBackendUnavailable(
                    "audit unavailable: the credential request could not be recorded"
                ) from exc

    async def fetch(
        self,
        bearer: HTTPAuthorizationCredentials | None,
        request: Request,
        kind: Kind,
        normalize: Callable[[], str],
    ) -> tuple[ClaimsLike, Credential]:
        """Authenticate, validate the target, authorize, fetch and audit one credential."""
        claims: ClaimsLike | None = None
        target = ""
        backend_ms = 0.0
        try:
            claims = await self.authenticate(bearer, request)
            target = normalize()
            await self.authorize(
                claims, kind, target, request.client.host if request.client else None
            )
            backend = self.router.choose(kind, target)
            if backend is None:
                raise SecretsBackendUnavailable(
                    f"no secrets backend configured for {kind} {target} (set VAULT_ADDR)"
                )
            started = time.perf_counter()
            try:
                credential = await self._get(backend, kind, target, claims)
            finally:
                backend_ms = (time.perf_counter() - started) * 1000
            self.still_live(claims, request)
        except StockadeError as exc:
            reason = exc.reason if isinstance(exc, TokenRejected) else str(exc)
            await self.audit(
                claims=claims,
                kind=kind,
                target=target,
                allow=False,
                reason=reason,
                backend_ms=backend_ms,
                required=False,
            )
            raise
        await self.audit(
            claims=claims,
            kind=kind,
            target=target,
            allow=True,
            reason="",
            backend_ms=backend_ms,
            required=True,
        )
        self.still_live(claims, request)  # killed while the audit was being stored
        return claims, credential

    async def _get(
        self, backend: CredentialBackend, kind: Kind, target: str, claims: ClaimsLike
    ) -> Credential:
        query = CredentialQuery(kind=kind, target=target, user=claims.sub, session_id=claims.sid)
        try:
            return await asyncio.wait_for(backend.get(query), self.settings.backend_timeout)
        except TimeoutError as exc:
            raise SecretsBackendUnavailable(
                f"the {backend.name} backend did not answer within "
                f"{self.settings.backend_timeout:g}s"
            ) from exc

    async def list_docker(
        self, bearer: HTTPAuthorizationCredentials | None, request: Request
    ) -> dict[str, str]:
        """Registries the session's user may get, with their user names."""
        claims: ClaimsLike | None = None
        source_ip = request.client.host if request.client else None
        started = time.perf_counter()
        try:
            claims = await self.authenticate(bearer, request)
            found: dict[str, str] = {}
            for name in self.router.backends_for("docker"):
                listed = await self._list(name, claims.sub)
                for key, username in listed.items():
                    try:
                        registry = normalize_host(key)
                        if self.router.backend_name("docker", registry) != name:
                            continue
                        await self.authorize(claims, "docker", registry, source_ip)
                    except (InvalidInput, PermissionDenied):
                        continue
                    found[registry] = username
        except StockadeError as exc:
            reason = exc.reason if isinstance(exc, TokenRejected) else str(exc)
            await self.audit(
                claims=claims,
                kind="docker",
                target="*",
                allow=False,
                reason=reason,
                backend_ms=(time.perf_counter() - started) * 1000,
                required=False,
            )
            raise
        await self.audit(
            claims=claims,
            kind="docker",
            target="*",
            allow=True,
            reason=f"list: {len(found)} registries",
            backend_ms=(time.perf_counter() - started) * 1000,
            required=True,
        )
        return found

    async def _list(self, name: str, user: str) -> dict[str, str]:
        backend = self.router.backends[name]
        try:
            return await asyncio.wait_for(
                backend.list_targets(user=user, kind="docker"), self.settings.backend_timeout
            )
        except TimeoutError as exc:
            raise SecretsBackendUnavailable(
                f"the {name} backend did not answer the docker list within "
                f"{self.settings.backend_timeout:g}s"
            ) from exc


def _expiry(claims: ClaimsLike, credential: Credential) -> datetime:
    """A credential never outlives the session token that fetched it."""
    session_end = claims.exp.astimezone(UTC)
    if credential.expires_at is None:
        return session_end
    return min(credential.expires_at.astimezone(UTC), session_end)


def create_app(
    *,
    identity: TokenVerifier,
    authz: PolicyDecider,
    backends: Mapping[str, CredentialBackend],
    publisher: EventPublisher | None,
    settings: BrokerSettings | None = None,
    metrics: Callable[[], str] | None = None,
    audit: AuditSearcher | None = None,
    mounts: Mapping[str, ASGIApp] | None = None,
) -> FastAPI:
    """The broker's ASGI app.

    ``mounts`` maps path prefixes to ASGI apps served on the same listener (``/console``: the
    web console, built by the composition root, since the console imports the broker).

    ``metrics`` renders Prometheus text for ``GET /metrics`` (counters only, never a secret;
    SSH Shield's in ``stockade up``); without it the route answers 404.

    ``audit`` answers ``GET /v1/audit/search`` (policy action ``audit.search``); without it
    the route answers 503.

    ``backends`` maps backend names (``vault``, ``kubernetes``) to instances; the routing table
    and limits come from ``settings`` (default :class:`BrokerSettings`). ``publisher`` receives
    the audit events; ``None`` means no bus, and then credentials are withheld unless
    ``settings.audit_required`` is off. Raises :class:`ConfigError` for a bad routing table.
    """
    settings = settings or BrokerSettings()
    router = Router(backends, routes=settings.routes, default=settings.default_backend)
    cluster_servers = {cluster.name: cluster.server for cluster in settings.clusters}
    broker = _Broker(
        identity=identity, authz=authz, router=router, publisher=publisher, settings=settings
    )
    app = FastAPI(
        title="Stockade broker",
        version=stockade.__version__,
        description="Credentials on demand for git, Docker and kubectl inside Stockade sessions.",
        docs_url=None,
        redoc_url=None,
    )

    @app.exception_handler(StockadeError)
    async def _stockade_error(_request: Request, exc: StockadeError) -> JSONResponse:
        return _error_for(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        kind = request.url.path.removeprefix("/v1/credentials/").split("/")[0]
        if kind in KINDS:  # a malformed credential request is still audited (token unverified)
            await broker.audit(
                claims=None,
                kind=kind,
                target="",
                allow=False,
                reason=f"invalid_input: {where}",
                backend_ms=0.0,
                required=False,
            )
        return _error(422, "invalid_input", where, f"{where}: {first.get('msg', 'invalid')}")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(
            exc.status_code, "http_error"
        )
        return _error(exc.status_code, code, str(exc.detail), str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        _log.error("broker_internal_error", error=type(exc).__name__)
        return _error(500, "internal", type(exc).__name__, "internal error; see the broker log")

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """Liveness: the broker answers."""
        return {"status": "ok"}

    @app.get(
        "/metrics",
        tags=["health"],
        response_class=PlainTextResponse,
        responses={404: {"description": "no metrics source configured"}},
    )
    async def prometheus_metrics() -> PlainTextResponse:
        """Prometheus text exposition (SSH Shield counters and the ban latency histogram)."""
        if metrics is None:
            return PlainTextResponse("no metrics source configured\n", status_code=404)
        return PlainTextResponse(metrics(), media_type="text/plain; version=0.0.4")

    @app.post(
        "/v1/credentials/git",
        response_model=GitCredential,
        responses=_ERRORS,
        tags=["credentials"],
    )
    async def git_credential(
        body: GitCredentialRequest, request: Request, bearer: _Bearer
    ) -> JSONResponse:
        """git credential helper ``get``: username and password for ``host``."""
        _claims, credential = await broker.fetch(
            bearer, request, "git", lambda: normalize_host(body.host)
        )
        expiry = int(credential.expires_at.timestamp()) if credential.expires_at else None
        answer = GitCredential(
            username=credential.username or (body.username or ""),
            password=credential.secret,
            password_expiry_utc=expiry,
        )
        return JSONResponse(answer.model_dump(), headers=_NO_STORE)

    @app.post(
        "/v1/credentials/docker",
        response_model=DockerCredential,
        responses=_ERRORS,
        tags=["credentials"],
    )
    async def docker_credential(
        body: DockerCredentialRequest, request: Request, bearer: _Bearer
    ) -> JSONResponse:
        """docker-credential-helpers ``get``: user name and secret for a registry."""
        _claims, credential = await broker.fetch(
            bearer, request, "docker", lambda: normalize_registry(body.server_url)
        )
        answer = DockerCredential(
            server_url=body.server_url, username=credential.username, secret=credential.secret
        )
        return JSONResponse(answer.model_dump(), headers=_NO_STORE)

    @app.post(
        "/v1/credentials/docker/list",
        response_model=DockerCredentialList,
        responses=_ERRORS,
        tags=["credentials"],
    )
    async def docker_list(
        body: DockerListRequest, request: Request, bearer: _Bearer
    ) -> JSONResponse:
        """docker-credential-helpers ``list``: registries and user names, never secrets."""
        found = await broker.list_docker(bearer, request)
        return JSONResponse(DockerCredentialList(credentials=found).model_dump(), headers=_NO_STORE)

    @app.post(
        "/v1/credentials/kubernetes",
        response_model=KubernetesCredential,
        responses=_ERRORS,
        tags=["credentials"],
    )
    async def kubernetes_credential(
        body: KubernetesCredentialRequest, request: Request, bearer: _Bearer
    ) -> JSONResponse:
        """kubectl exec plugin: a bearer token and its expiry for ``cluster``."""
        claims, credential = await broker.fetch(
            bearer,
            request,
            "kubernetes",
            lambda: validate_cluster_server(body.cluster, body.server, cluster_servers),
        )
        answer = KubernetesCredential(
            token=credential.secret, expiration_timestamp=_expiry(claims, credential)
        )
        return JSONResponse(answer.model_dump(mode="json"), headers=_NO_STORE)

    @app.get(
        "/v1/audit/search",
        responses={k: v for k, v in _ERRORS.items() if k not in (400, 404, 413)},
        tags=["audit"],
    )
    async def audit_search(request: Request, bearer: _Bearer) -> Response:
        """Audit events, newest first: filters ``user``, ``action`` (``ssh.*`` for a prefix),
        ``decision`` (allow/deny), ``source`` (an IP), ``session``, ``since``/``until`` (a
        duration ago such as ``1h``, or ISO 8601); ``limit`` (1-1000) and ``before`` (the
        ``next_before`` of the previous page). Allowed by policy action ``audit.search``.
        The ``Server-Timing`` header says how long authentication and policy (``auth``), the
        search with its JSON (``search``) and both (``total``) took in the broker."""
        started = time.perf_counter()
        claims = await broker.authenticate(bearer, request)
        await broker.authorize_audit(claims, request.client.host if request.client else None)
        if audit is None:
            raise SecretsBackendUnavailable("audit search unavailable: no audit store configured")
        items = request.query_params.multi_items()
        names = [name for name, _ in items]
        if len(set(names)) != len(names):
            repeated = next(n for n in names if names.count(n) > 1)
            raise InvalidInput(repeated, "given more than once")
        searched = time.perf_counter()
        page = await audit.search_params(dict(items))
        body = pydantic_core.to_json(page)  # several times faster than json.dumps on large pages
        response = Response(body, media_type="application/json", headers=_NO_STORE)
        done = time.perf_counter()
        response.headers["Server-Timing"] = (
            f"auth;dur={(searched - started) * 1000:.3f}, "
            f"search;dur={(done - searched) * 1000:.3f}, total;dur={(done - started) * 1000:.3f}"
        )
        return response

    for prefix, mounted in (mounts or {}).items():
        app.mount(prefix, mounted)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    return app

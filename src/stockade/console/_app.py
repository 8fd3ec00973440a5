"""The console's ASGI app: pages rendered on the server (Jinja2), htmx for partial updates.

Every response carries a strict Content-Security-Policy (scripts and styles from this origin only,
no inline script or style; ``'wasm-unsafe-eval'`` lets the asciinema player's terminal emulator,
WebAssembly shipped in its bundle, run), ``X-Frame-Options: DENY`` and ``no-store``. Every page
and action is an authz decision (``console.view``, ``console.ban``, ``console.kill``) for the
signed-in user with the roles their session may use; the authorizer's decision log puts each one
in the audit trail. State-changing requests need the session's CSRF token (form field ``csrf``)
and a same-origin ``Origin`` when the browser sends one.
"""

from __future__ import annotations

import inspect
import json
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import jinja2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stockade.audit import AuditQuery, AuditSearch, parse_time
from stockade.authz import Context, Resource, Subject, build_input
from stockade.broker import PolicyDecider
from stockade.core.durations import format_duration, parse_duration
from stockade.core.errors import InvalidInput, NotFound, StockadeError
from stockade.core.events import EventPublisher
from stockade.core.logging import escape_peer, get_logger
from stockade.core.settings import ShieldSettings
from stockade.identity import User, Workspace
from stockade.shield import Ban, BanStore, manual_ban, manual_unban
from stockade.store import Store

from ._auth import COOKIE, ConsoleSession, Sessions
from ._chart import bucket_minutes, failures_svg
from ._data import (
    PAGE_SIZE,
    SessionFilter,
    failure_events,
    last_logins,
    one_session,
    read_cast,
    recording_path,
    session_page,
)
from ._live import tail_cast
from ._oidc import FLOW_COOKIE, FLOW_TTL, OidcSignIn, OidcSignInError

__all__ = [
    "BAN_ACTION",
    "CSP",
    "KILL_ACTION",
    "PREFIX",
    "VIEW_ACTION",
    "ConsoleIdentity",
    "create_console",
]

_log = get_logger("stockade.console")

#: Where the broker mounts the console.
PREFIX = "/console"
VIEW_ACTION = "console.view"
BAN_ACTION = "console.ban"
KILL_ACTION = "console.kill"
CSP = (
    "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; "
    "img-src 'self'; font-src 'self'; connect-src 'self'; worker-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # no-referrer would make Chromium send Origin: null
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
_NO_STORE = {"Cache-Control": "no-store", "Vary": "HX-Request"}
_HERE = Path(__file__).parent
_MAX_FORM = 16 << 10


class ConsoleIdentity(Protocol):
    """What the console reads from identity (``IdentityService`` satisfies it)."""

    async def get_user(self, name: str) -> User: ...

    async def list_users(self) -> list[User]: ...

    async def list_workspaces(self, *, owner: str | None = None) -> list[Workspace]: ...

    async def kill_session(self, session_id: str, *, by: str = "", message: str = ...) -> Any: ...

    async def is_session_live(self, session_id: str) -> bool: ...


class _Denied(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class _Who:
    user: str
    roles: tuple[str, ...]
    groups: tuple[str, ...]
    session: ConsoleSession
    cookie: str


class _SecurityHeaders:
    """ASGI middleware: the console's security headers on every response, and nothing but a 404
    over plain HTTP (the broker also serves its app on unix sockets for the credential helpers,
    one of them mounted in each workspace: the console is not for a workspace to reach)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        inner = self.app
        if scope.get("scheme") != "https":
            inner = HTMLResponse("not found\n", status_code=404, headers=_NO_STORE)

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (k, v)
                    for k, v in message.get("headers", [])
                    if k.decode("latin-1").lower() not in {h.lower() for h in _HEADERS}
                ]
                headers += [(k.encode(), v.encode()) for k, v in _HEADERS.items()]
                message = {**message, "headers": headers}
            await send(message)

        await inner(scope, receive, with_headers)


def _when(value: Any) -> str:
    if isinstance(value, str):
        text: str = value
        try:
            value = datetime.fromisoformat(text)
        except ValueError:
            return text
    if isinstance(value, int | float):
        value = datetime.fromtimestamp(value, UTC)
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return "" if value is None else str(value)


def _templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(_HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = _when
    env.filters["tojson_attr"] = lambda v: json.dumps(v, sort_keys=True)
    return env


def create_console(
    *,
    identity: ConsoleIdentity,
    authz: PolicyDecider,
    store: Store,
    sessions: Sessions,
    recordings: Path,
    publisher: EventPublisher | None = None,
    bans: BanStore | None = None,
    shield_settings: ShieldSettings | None = None,
    static_dir: Path | None = None,
    oidc: OidcSignIn | None = None,
) -> ASGIApp:
    """The console app, to be mounted at :data:`PREFIX` on the broker's TLS listener.

    ``recordings`` is the only directory casts are served from. Without ``bans`` the shield
    page says SSH Shield is off. ``static_dir`` defaults to the package's ``static``
    (``vendor/`` in it is filled by ``make venv`` from the npm registry). With ``oidc`` the
    login page offers "Sign in with OIDC" (``/oidc/start``, ``/oidc/callback``).
    """
    env = _templates()
    audit = AuditSearch(store)
    static = static_dir or _HERE / "static"

    def page(
        name: str, request: Request, who: _Who | None, status: int = 200, **ctx: Any
    ) -> Response:
        html = env.get_template(name).render(
            prefix=PREFIX,
            who=who,
            csrf=who.session.csrf if who else "",
            path=request.url.path,
            **ctx,
        )
        return HTMLResponse(html, status_code=status, headers=_NO_STORE)

    def refuse(request: Request, who: _Who | None, status: int, message: str) -> Response:
        if request.headers.get("accept", "").startswith("application/json"):
            return JSONResponse({"error": message}, status_code=status, headers=_NO_STORE)
        return page("error.html", request, who, status=status, status_code=status, message=message)

    async def decide(
        who: _Who, action: str, resource: Resource, request: Request, **extra: Any
    ) -> None:
        doc = build_input(
            action,
            resource,
            Context(
                user=Subject(name=who.user, roles=who.roles, groups=who.groups),
                source_ip=request.client.host if request.client else None,
                auth_method="console",
                extra=extra,
            ),
        )
        answer = authz.decide(doc)
        decision = await answer if inspect.isawaitable(answer) else answer
        if not decision.allow:
            reasons = "; ".join(decision.reasons) or "no rule allows it"
            _log.warning("console_denied", user=who.user, action=action, reasons=reasons)
            raise _Denied(403, f"{action} denied: {reasons}")

    async def signed_in(request: Request) -> _Who:
        cookie = request.cookies.get(COOKIE)
        session = sessions.get(cookie)
        if session is None or cookie is None:
            raise _Denied(401, "not signed in")
        try:
            user = await identity.get_user(session.user)
        except NotFound:
            sessions.close_user(session.user)
            raise _Denied(401, "not signed in") from None
        if user.disabled:
            sessions.close_user(session.user)
            raise _Denied(401, "not signed in")
        roles = tuple(r for r in session.roles if r in user.roles)
        return _Who(user.name, roles, tuple(user.groups), session, cookie)

    async def form(request: Request, who: _Who) -> dict[str, str]:
        """The urlencoded body of a state-changing request, after the CSRF and origin checks."""
        origin = request.headers.get("origin")
        if origin is not None and origin != f"{request.url.scheme}://{request.url.netloc}":
            raise _Denied(403, "cross-origin request refused")
        kind = request.headers.get("content-type", "").split(";")[0].strip()
        if kind != "application/x-www-form-urlencoded":
            raise _Denied(403, "csrf token missing")
        body = await request.body()
        if len(body) > _MAX_FORM:
            raise _Denied(413, "form too large")
        try:
            pairs = urllib.parse.parse_qsl(
                body.decode("utf-8"), keep_blank_values=True, strict_parsing=False
            )
        except UnicodeDecodeError:
            raise _Denied(400, "form is not UTF-8") from None
        fields: dict[str, str] = {}
        for key, value in pairs:
            if key in fields:
                raise _Denied(400, f"{key} given more than once")
            fields[key] = value
        if not Sessions.csrf_ok(who.session, fields.get("csrf")):
            _log.warning("console_csrf_refused", user=who.user, path=request.url.path)
            raise _Denied(403, "csrf token missing or wrong")
        return fields

    def handler(
        view: Callable[[Request, _Who], Awaitable[Response]], *, signin: bool = True
    ) -> Callable[[Request], Awaitable[Response]]:
        async def run(request: Request) -> Response:
            who: _Who | None = None
            try:
                who = await signed_in(request)
                return await view(request, who)
            except _Denied as exc:
                if exc.status == 401 and request.method == "GET" and signin:
                    return RedirectResponse(f"{PREFIX}/login", status_code=303)
                return refuse(request, who, exc.status, exc.message)
            except NotFound as exc:
                return refuse(request, who, 404, str(exc))
            except InvalidInput as exc:
                return refuse(request, who, 400, str(exc))
            except StockadeError as exc:
                _log.warning("console_unavailable", error=str(exc))
                return refuse(request, who, 503, str(exc))

        return run

    # -- sign-in ---------------------------------------------------------------------------

    async def login_page(request: Request) -> Response:
        return page("login.html", request, None, oidc=oidc is not None)

    async def login(request: Request) -> Response:
        origin = request.headers.get("origin")
        if origin is not None and origin != f"{request.url.scheme}://{request.url.netloc}":
            return JSONResponse({"error": "cross-origin"}, status_code=403, headers=_NO_STORE)
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return JSONResponse({"error": "send JSON"}, status_code=415, headers=_NO_STORE)
        body = await request.body()
        try:
            code = json.loads(body).get("code") if len(body) <= 1024 else None
        except (ValueError, AttributeError):
            code = None
        name = await sessions.redeem(code) if isinstance(code, str) else None
        refused = JSONResponse(
            {"error": "this sign-in link is unknown, expired or already used"},
            status_code=403,
            headers=_NO_STORE,
        )
        if name is None:
            _log.warning(
                "console_login_refused", source=request.client.host if request.client else None
            )
            return refused
        try:
            user = await identity.get_user(name)
        except NotFound:
            return refused
        if user.disabled:
            return refused
        try:
            who = await open_session(request, user, method="code")
        except _Denied as exc:
            return JSONResponse({"error": exc.message}, status_code=exc.status, headers=_NO_STORE)
        response = JSONResponse(
            {"user": user.name, "next": f"{PREFIX}/sessions"}, headers=_NO_STORE
        )
        set_session_cookie(response, who)
        return response

    async def open_session(request: Request, user: User, *, method: str) -> _Who:
        """A console session for ``user`` (signed in by ``method``) once policy allows
        ``console.view``; every sign-in path ends here."""
        try:
            cookie, session = sessions.open(user.name, tuple(user.roles))
        except InvalidInput as exc:
            raise _Denied(503, str(exc)) from None
        who = _Who(user.name, tuple(user.roles), tuple(user.groups), session, cookie)
        try:
            await decide(who, VIEW_ACTION, Resource(kind="console", name="login"), request)
        except _Denied:
            sessions.close(cookie)
            raise
        _log.info("console_login", user=user.name, method=method)
        return who

    def set_session_cookie(response: Response, who: _Who) -> None:
        response.set_cookie(
            COOKIE,
            who.cookie,
            max_age=int(who.session.expires - time.time()),
            path=PREFIX,
            secure=True,
            httponly=True,
            samesite="strict",
        )

    def oidc_refused(request: Request, status: int, message: str) -> Response:
        response = refuse(request, None, status, message)
        response.delete_cookie(FLOW_COOKIE, path=f"{PREFIX}/oidc", secure=True, httponly=True)
        return response

    async def oidc_start(request: Request) -> Response:
        if oidc is None:
            return HTMLResponse("not found\n", status_code=404, headers=_NO_STORE)
        redirect_uri = f"{request.url.scheme}://{request.url.netloc}{PREFIX}/oidc/callback"
        try:
            source = request.client.host if request.client else ""
            cookie, location = await oidc.start(redirect_uri, source=source)
        except OidcSignInError as exc:
            return oidc_refused(request, exc.status, exc.message)
        response = RedirectResponse(location, status_code=303, headers=_NO_STORE)
        response.set_cookie(
            FLOW_COOKIE,
            cookie,
            max_age=int(FLOW_TTL),
            path=f"{PREFIX}/oidc",
            secure=True,
            httponly=True,
            samesite="lax",  # sent on the provider's top-level redirect back, not on a subrequest
        )
        return response

    async def oidc_callback(request: Request) -> Response:
        if oidc is None:
            return HTMLResponse("not found\n", status_code=404, headers=_NO_STORE)
        params: dict[str, str] = {}
        for key, value in request.query_params.multi_items():
            if key in params:
                return oidc_refused(request, 400, f"{key} given more than once")
            params[key] = value
        try:
            login = await oidc.finish(request.cookies.get(FLOW_COOKIE), params)
        except OidcSignInError as exc:
            return oidc_refused(request, exc.status, exc.message)
        if login.user.disabled:
            return oidc_refused(request, 403, "sign-in refused: user_disabled")
        try:
            who = await open_session(request, login.user, method="oidc")
        except _Denied as exc:
            return oidc_refused(request, exc.status, exc.message)
        # a page, not a redirect: the browser came here from the provider (cross-site), and a
        # SameSite=Strict cookie is not sent on the rest of that navigation
        response = page("signed_in.html", request, None, next=f"{PREFIX}/sessions")
        set_session_cookie(response, who)
        response.delete_cookie(FLOW_COOKIE, path=f"{PREFIX}/oidc", secure=True, httponly=True)
        return response

    async def logout(request: Request, who: _Who) -> Response:
        await form(request, who)
        sessions.close(who.cookie)
        _log.info("console_logout", user=who.user)
        response = RedirectResponse(f"{PREFIX}/login", status_code=303)
        response.delete_cookie(COOKIE, path=PREFIX, secure=True, httponly=True, samesite="strict")
        return response

    async def root(request: Request, who: _Who) -> Response:
        return RedirectResponse(f"{PREFIX}/sessions", status_code=303)

    # -- sessions --------------------------------------------------------------------------

    async def sessions_list(request: Request, who: _Who) -> Response:
        await decide(who, VIEW_ACTION, Resource(kind="console", name="sessions"), request)
        params = dict(request.query_params)
        query = SessionFilter.parse(params, parse_time=parse_time)
        listed = await session_page(store, query)
        keep = {k: v for k, v in params.items() if k != "page" and v}
        name = "sessions_rows.html" if _partial(request) else "sessions.html"
        return page(name, request, who, listed=listed, filters=params, keep=keep,
                    page_size=PAGE_SIZE, encode=urllib.parse.urlencode)  # fmt: skip

    async def session_detail(request: Request, who: _Who) -> Response:
        session_id = request.path_params["session_id"]
        await decide(who, VIEW_ACTION, Resource(kind="session", name=session_id), request)
        row = await one_session(store, session_id)
        playable = False
        if row["recording"]:
            try:
                recording_path(row["recording"], recordings)
                playable = True
            except NotFound:
                playable = False
        return page("session.html", request, who, s=row, playable=playable,
                    killed=request.query_params.get("killed") == "1")  # fmt: skip

    async def session_cast(request: Request, who: _Who) -> Response:
        session_id = request.path_params["session_id"]
        await decide(who, VIEW_ACTION, Resource(kind="session", name=session_id), request)
        row = await one_session(store, session_id)
        data = read_cast(recording_path(row["recording"], recordings))
        return Response(data, media_type="application/x-asciicast", headers=_NO_STORE)

    async def session_live(request: Request, who: _Who) -> Response:
        session_id = request.path_params["session_id"]
        await decide(who, VIEW_ACTION, Resource(kind="session", name=session_id), request)
        row = await one_session(store, session_id)
        path = recording_path(row["recording"], recordings)

        async def live() -> bool:  # a closed page cancels the stream itself
            return await identity.is_session_live(session_id)

        async def still_allowed() -> bool:
            """The viewer is still signed in, enabled and holds every role the stream was
            allowed with (no new decision each second: that would flood the audit trail)."""
            try:
                now = await signed_in(request)
                ok = now.session is who.session and set(who.roles) <= set(now.roles)
            except (_Denied, StockadeError):
                ok = False
            if not ok:
                _log.info("console_live_revoked", user=who.user, session=session_id[:64])
            return ok

        async def stream() -> AsyncIterator[bytes]:
            async for chunk in tail_cast(path, live, allowed=still_allowed):
                yield chunk

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={**_NO_STORE, "X-Accel-Buffering": "no"},
        )

    async def session_kill(request: Request, who: _Who) -> Response:
        session_id = request.path_params["session_id"]
        fields = await form(request, who)
        try:
            row: dict[str, Any] | None = await one_session(store, session_id)
        except NotFound:
            row = None  # decided (and audited) all the same, then 404
        owner = row["username"] if row else None
        await decide(who, KILL_ACTION, Resource(kind="session", name=session_id[:64], owner=owner),
                     request)  # fmt: skip
        if row is None:
            raise NotFound("session", session_id[:64])
        if fields.get("confirm") != "yes":
            raise InvalidInput("confirm", "tick the box to confirm the kill")
        if not row["live"]:
            raise InvalidInput("session", f"{session_id} has already ended")
        await identity.kill_session(session_id, by=f"console:{who.user}")
        _log.info("console_kill", user=who.user, session=session_id)
        return RedirectResponse(f"{PREFIX}/sessions/{session_id}?killed=1", status_code=303)

    # -- audit -----------------------------------------------------------------------------

    _AUDIT_FILTERS = ("user", "action", "decision", "source", "session", "since", "until")

    def audit_params(request: Request) -> dict[str, str]:
        return {k: v for k, v in request.query_params.items() if k in _AUDIT_FILTERS and v}

    async def audit_page(request: Request, who: _Who) -> Response:
        await decide(who, VIEW_ACTION, Resource(kind="console", name="audit"), request)
        params = audit_params(request)
        before = request.query_params.get("before") or None
        search = {**params, "limit": str(PAGE_SIZE)}
        if before:
            search["before"] = before
        found = await audit.search_params(search)
        rows = [
            {**e, "detail": json.dumps(e, indent=2, sort_keys=True, ensure_ascii=False)}
            for e in found["events"]
        ]
        name = "audit_rows.html" if _partial(request) else "audit.html"
        nxt = found.get("next_before")
        return page(name, request, who, rows=rows, filters=params, next_before=nxt,
                    encode=urllib.parse.urlencode)  # fmt: skip

    async def audit_export(request: Request, who: _Who) -> Response:
        await decide(who, VIEW_ACTION, Resource(kind="console", name="audit.export"), request)
        params = audit_params(request)
        query = AuditQuery.parse(**_audit_kwargs(params))

        async def lines() -> AsyncIterator[bytes]:
            async for record in audit.export(query):
                yield (json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n").encode()

        return StreamingResponse(
            lines(),
            media_type="application/x-ndjson",
            headers={**_NO_STORE, "Content-Disposition": 'attachment; filename="audit.jsonl"'},
        )

    # -- shield ----------------------------------------------------------------------------

    async def shield_page(
        request: Request, who: _Who, *, status: int = 200, error: str = ""
    ) -> Response:
        await decide(who, VIEW_ACTION, Resource(kind="console", name="shield"), request)
        now = datetime.now(UTC)
        listed: list[Ban] = await bans.all() if bans is not None else []
        epoch = now.timestamp()
        active = sorted((b for b in listed if b.active(epoch)), key=lambda b: b.until, reverse=True)
        counts = bucket_minutes(await failure_events(store, now=now), now=now)
        return page(
            "shield.html", request, who, status=status, error=error, enabled=bans is not None,
            bans=[
                {"source": b.source, "strikes": b.strikes, "until": b.until, "reason": b.reason,
                 "left": format_duration(timedelta(seconds=int(b.remaining(epoch))))}
                for b in active
            ],
            chart=failures_svg(counts, now=now), total=sum(counts),
        )  # fmt: skip

    async def shield_ban(request: Request, who: _Who) -> Response:
        fields = await form(request, who)
        source = fields.get("source", "").strip()[:64]
        await decide(who, BAN_ACTION, Resource(kind="shield.ban", name=source), request)
        if bans is None or shield_settings is None:
            raise InvalidInput("shield", "SSH Shield is not enabled")
        duration = parse_duration(fields.get("duration", "1h") or "1h", field="duration")
        seconds = duration.total_seconds()
        if not 0 < seconds <= 366 * 86400:
            raise InvalidInput("duration", "between 1s and 366d")
        reason = " ".join((fields.get("reason") or "manual").split())[:120]
        try:
            ban = await manual_ban(
                bans, shield_settings, source, duration=seconds,
                reason=f"{reason} (console: {who.user})", bus=_bus(publisher),
            )  # fmt: skip
        except InvalidInput as exc:
            return await shield_page(request, who, status=400, error=str(exc))
        _log.info("console_ban", user=who.user, source=escape_peer(ban.source))
        return RedirectResponse(f"{PREFIX}/shield", status_code=303)

    async def shield_unban(request: Request, who: _Who) -> Response:
        fields = await form(request, who)
        source = fields.get("source", "").strip()[:64]
        await decide(who, BAN_ACTION, Resource(kind="shield.unban", name=source), request)
        if bans is None:
            raise InvalidInput("shield", "SSH Shield is not enabled")
        removed = await manual_unban(
            bans, source, reason=f"console: {who.user}", bus=_bus(publisher)
        )
        if not removed:
            raise NotFound("ban", source)
        _log.info("console_unban", user=who.user, source=escape_peer(source))
        return RedirectResponse(f"{PREFIX}/shield", status_code=303)

    # -- users and workspaces --------------------------------------------------------------

    async def users_page(request: Request, who: _Who) -> Response:
        await decide(who, VIEW_ACTION, Resource(kind="console", name="users"), request)
        users = await identity.list_users()
        logins = await last_logins(store)
        return page("users.html", request, who, users=users, logins=logins)

    async def workspaces_page(request: Request, who: _Who) -> Response:
        await decide(who, VIEW_ACTION, Resource(kind="console", name="workspaces"), request)
        return page("workspaces.html", request, who, workspaces=await identity.list_workspaces())

    routes = [
        Route("/", handler(root), methods=["GET"]),
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/oidc/start", oidc_start, methods=["GET"]),
        Route("/oidc/callback", oidc_callback, methods=["GET"]),
        Route("/logout", handler(logout, signin=False), methods=["POST"]),
        Route("/sessions", handler(sessions_list), methods=["GET"]),
        Route("/sessions/{session_id}", handler(session_detail), methods=["GET"]),
        Route("/sessions/{session_id}/cast", handler(session_cast, signin=False), methods=["GET"]),
        Route("/sessions/{session_id}/live", handler(session_live, signin=False), methods=["GET"]),
        Route("/sessions/{session_id}/kill", handler(session_kill, signin=False), methods=["POST"]),
        Route("/audit", handler(audit_page), methods=["GET"]),
        Route("/audit/export", handler(audit_export, signin=False), methods=["GET"]),
        Route("/shield", handler(shield_page), methods=["GET"]),
        Route("/shield/ban", handler(shield_ban, signin=False), methods=["POST"]),
        Route("/shield/unban", handler(shield_unban, signin=False), methods=["POST"]),
        Route("/users", handler(users_page), methods=["GET"]),
        Route("/workspaces", handler(workspaces_page), methods=["GET"]),
        Mount("/static", app=StaticFiles(directory=static, check_dir=False), name="static"),
    ]

    async def not_found(request: Request, exc: Exception) -> Response:
        return HTMLResponse("not found\n", status_code=404, headers=_NO_STORE)

    async def not_allowed(request: Request, exc: Exception) -> Response:
        return HTMLResponse("method not allowed\n", status_code=405, headers=_NO_STORE)

    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: not_allowed})
    return _SecurityHeaders(app)


def _partial(request: Request) -> bool:
    """An htmx swap of the rows only (a history restore wants the whole page)."""
    headers = request.headers
    return bool(headers.get("hx-request")) and not headers.get("hx-history-restore-request")


def _audit_kwargs(params: Mapping[str, str]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if v}


def _bus(publisher: EventPublisher | None) -> Any:
    """``manual_ban`` publishes through a ``Bus``; anything else publishes nothing here."""
    return publisher if publisher is not None and hasattr(publisher, "key_value") else None


def _names(values: Iterable[str]) -> str:
    return ", ".join(values)

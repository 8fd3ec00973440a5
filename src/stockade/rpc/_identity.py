"""The identity service over gRPC.

:class:`IdentityServicer` serves an in-process :class:`IdentityService`; :class:`IdentityClient`
offers the same asynchronous methods over a channel (mutual TLS between services, or the 0600 admin
socket for the CLI), raising the same :mod:`stockade.core.errors` classes.

Who may call what is decided from the caller's certificate, by its one common name (the service:
``gateway``, ``broker``, ...; a certificate naming none or several is nobody's) and one table,
:data:`CALLERS`: each method lists the services that may call it, and a method it does not list
is open to none of them (fail closed). An admin certificate and the admin socket (file
permissions; the CLI) may call every method. So the gateway asks the login questions and keeps
its sessions, the broker checks tokens and session liveness, and the lookups (users, sessions,
keys, workspaces) stay the CLI's: no service certificate can list the users or the session ids
(handles for kills and prefix lookups). A gateway's calls that name a gateway (Heartbeat,
EndStaleSessions, OpenSession) or a session a gateway opened (EndSession, session tokens) must
name the one gateway id its certificate names (URI SAN ``spiffe://stockade/gateway/<id>``).
Every refusal is PERMISSION_DENIED with its reason, logged and audited (``service.rejected``).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from datetime import timedelta
from types import MappingProxyType
from typing import Any, TypeVar

from grpc import aio

from stockade.core import InvalidInput, NotFound, PermissionDenied, get_logger
from stockade.identity import (
    AuthFailure,
    Claims,
    Heartbeat,
    IdentityService,
    OidcLogin,
    OpenedSession,
    Principal,
    SessionInfo,
    SessionRequest,
    SshKey,
    TotpEnrollment,
    User,
    Workspace,
)
from stockade.tls import GATEWAY_URI_PREFIX, gateway_ids, gateway_uri

from ._callers import Publisher, Refusal, exempt, name_refusal, report_refusal
from ._convert import (
    authenticated_from_pb,
    authenticated_to_pb,
    claims_from_json,
    claims_to_json,
    key_from_pb,
    key_to_pb,
    principal_from_pb,
    principal_to_pb,
    session_from_pb,
    session_to_pb,
    user_from_pb,
    user_to_pb,
    workspace_from_pb,
    workspace_to_pb,
)
from ._errors import from_rpc_error, rpc_errors_to_status
from ._gen import identity_pb2 as pb
from ._gen import identity_pb2_grpc

__all__ = ["IdentityClient", "IdentityServicer"]

log = get_logger("stockade.rpc.identity")

Ctx = aio.ServicerContext[Any, Any]
KILL_MESSAGE = "session terminated by an administrator"
T = TypeVar("T")


#: Certificate common names of gateways. Only a gateway (or an admin) asks the login questions
#: (a password or TOTP oracle otherwise), opens, starts, ends and sweeps sessions, or mints a
#: session token: a gateway is trusted to have authenticated the user it names, so any other
#: service's certificate could otherwise become any user, admins included.
GATEWAY_NAMES = frozenset({"gateway"})

#: Certificate common names of the credential broker: it checks the bearer tokens of sessions
#: and the liveness of the sessions behind its per-session sockets.
BROKER_NAMES = frozenset({"broker"})

_ADMIN_ONLY: frozenset[str] = frozenset()

#: The rule of IssueToken without a session id (a free-standing token): an admin's alone.
UNBOUND_ISSUE = "IssueToken (no session_id)"

#: Who may call each method, by the caller certificate's one common name; an admin certificate
#: and the admin socket may call them all. A method (or rule) not listed here is refused to
#: every other certificate. The callers are those of ``src/``: the gateway (``gateway._login``,
#: ``_gateway``, ``_heartbeat``) and the broker (``broker._app``, ``_liveness``, through
#: ``cli._runtime``'s ``IdentityClient``); the CLI and the console reach identity through the
#: admin socket or in process, and shield, audit, authz and worktrace ask identity nothing.
CALLERS: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        # the gateway's login questions
        "AuthenticateKey": GATEWAY_NAMES,
        "AuthenticatePassword": GATEWAY_NAMES,
        "VerifyTotp": GATEWAY_NAMES,
        # the session registry as gateways keep it (the gateway id is checked as well)
        "OpenSession": GATEWAY_NAMES,
        "StartSession": GATEWAY_NAMES,
        "EndSession": GATEWAY_NAMES,
        "EndStaleSessions": GATEWAY_NAMES,
        "Heartbeat": GATEWAY_NAMES,
        "IssueToken": GATEWAY_NAMES,  # bound to a session of the calling gateway
        UNBOUND_ISSUE: _ADMIN_ONLY,
        # the broker's checks (a JWKS holds public keys only: a token verifier's)
        "VerifyToken": BROKER_NAMES,
        "IsSessionLive": BROKER_NAMES,
        "GetJwks": BROKER_NAMES,
        # lookups: the CLI's and the console's, no service's (users, keys and session ids)
        "GetUser": _ADMIN_ONLY,
        "ListUsers": _ADMIN_ONLY,
        "LookupKey": _ADMIN_ONLY,
        "KeyOwner": _ADMIN_ONLY,
        "VerifyPassword": _ADMIN_ONLY,  # a password oracle; the gateway authenticates instead
        "GetSession": _ADMIN_ONLY,
        "FindSessions": _ADMIN_ONLY,
        "ListSessions": _ADMIN_ONLY,
        "GetWorkspace": _ADMIN_ONLY,
        "ListWorkspaces": _ADMIN_ONLY,
        "DefaultWorkspace": _ADMIN_ONLY,
        "LoginOidc": _ADMIN_ONLY,  # `stockade login --oidc` (admin socket); the console in process
        # administration
        "AddUser": _ADMIN_ONLY,
        "SetDisabled": _ADMIN_ONLY,
        "RemoveUser": _ADMIN_ONLY,
        "SetRoles": _ADMIN_ONLY,
        "AddKey": _ADMIN_ONLY,
        "RemoveKey": _ADMIN_ONLY,
        "SetPassword": _ADMIN_ONLY,
        "EnableTotp": _ADMIN_ONLY,
        "DisableTotp": _ADMIN_ONLY,
        "KillSession": _ADMIN_ONLY,
        "AddWorkspace": _ADMIN_ONLY,
        "RemoveWorkspace": _ADMIN_ONLY,
    }
)


def _refusal(
    context: Ctx, method: str, *, rule: str | None = None, gateway_id: str | None = None
) -> Refusal | None:
    """Whether the caller of ``method`` is refused (None: it may call).

    The admin unix socket (file permissions) and an admin certificate may make every call.
    Any other certificate must name exactly one common name, listed in :data:`CALLERS` for
    ``rule`` (the method when None); a rule not there is refused. A call that names a gateway
    id (``gateway_id`` not None: Heartbeat, EndStaleSessions, OpenSession, and a session's
    owner) must name the one gateway id of the caller's certificate, or a gateway could
    declare another gateway's boots dead, sweep its sessions or open sessions in its name.
    """
    allowed = CALLERS.get(rule or method, _ADMIN_ONLY)
    refusal = name_refusal(context, method, allowed, kinds={GATEWAY_NAMES: "gateway"})
    if refusal is not None or gateway_id is None or exempt(context):
        return refusal
    pems = list(context.auth_context().get("x509_pem_cert", []))
    ids = gateway_ids(pems[0]) if len(pems) == 1 else []
    if not ids:
        return Refusal(
            "no_gateway_id",
            f"{method}: the gateway certificate names no gateway id (a URI SAN"
            f" {GATEWAY_URI_PREFIX}<id>)",
        )
    if len(ids) > 1:
        return Refusal(
            "several_gateway_ids",
            f"{method}: the gateway certificate names {len(ids)} gateway ids; it must name one",
        )
    try:
        # identity records ids as check_text leaves them (stripped): an id the certificate
        # names with a space, a slash or a percent sign would match the call here and then be
        # recorded as another gateway's
        gateway_uri(ids[0])
    except InvalidInput:
        return Refusal(
            "bad_gateway_id",
            f"{method}: the gateway certificate's id {ids[0][:128]!r} cannot be named in a"
            " certificate (no spaces, '/', '?', '#' or '%')",
        )
    if ids[0] != gateway_id:
        return Refusal(
            "wrong_gateway_id",
            f"{method} for gateway {gateway_id[:128]!r} from the certificate of gateway"
            f" {ids[0][:128]!r}",
        )
    return None


def _certificate_gateway_id(context: Ctx) -> str:
    """The gateway id the caller's certificate names when it names exactly one, else ""
    (which :func:`_refusal` then refuses for what it is: none, several, or a bad one)."""
    pems = list(context.auth_context().get("x509_pem_cert", []))
    ids = gateway_ids(pems[0]) if len(pems) == 1 else []
    return ids[0] if len(ids) == 1 else ""


def _opt(msg: Any, field: str) -> Any:
    return getattr(msg, field) if msg.HasField(field) else None


class IdentityServicer(identity_pb2_grpc.IdentityServicer):
    """Serves every identity call from an in-process :class:`IdentityService`."""

    def __init__(self, identity: IdentityService, *, publisher: Publisher | None = None) -> None:
        self._id = identity
        self._publisher = publisher
        self.refusals = 0

    async def _require(
        self, context: Ctx, method: str, *, rule: str | None = None, gateway_id: str | None = None
    ) -> None:
        """Refuse the call (PermissionDenied with the reason, logged and audited as a
        ``service.rejected`` event) unless the caller may make it: :data:`CALLERS` lists its
        certificate's name for ``rule`` (the method when None), and see :func:`_refusal`.
        Every method calls this first."""
        refusal = _refusal(context, method, rule=rule, gateway_id=gateway_id)
        if refusal is None:
            return
        self.refusals += 1
        await report_refusal(
            context, "identity", f"/stockade.identity.v1.Identity/{method}", method, refusal,
            publisher=self._publisher, log=log,
        )  # fmt: skip
        area = "identity.session" if CALLERS.get(rule or method) else "identity.manage"
        raise PermissionDenied(area, [refusal.why])

    async def _require_owner(self, context: Ctx, method: str, session_id: str) -> None:
        """A gateway-scoped call about one session (EndSession, a session token): a session
        opened by a gateway (``OpenSession`` recorded its id) is that gateway's alone, or any
        gateway certificate could end or take over another gateway's sessions. A session that
        does not exist is left to the call itself (NotFound)."""
        await self._require(context, method)
        if exempt(context):
            return
        try:
            owner = (await self._id.get_session(session_id)).gateway_id
        except NotFound:
            return
        if owner:
            await self._require(context, method, gateway_id=owner)

    @rpc_errors_to_status
    async def AuthenticateKey(
        self, request: pb.AuthenticateKeyRequest, context: Ctx
    ) -> pb.AuthenticateResponse:
        await self._require(context, "AuthenticateKey")
        result = await self._id.authenticate_key(request.target, request.fingerprint)
        return authenticated_to_pb(result)

    @rpc_errors_to_status
    async def AuthenticatePassword(
        self, request: pb.AuthenticatePasswordRequest, context: Ctx
    ) -> pb.AuthenticateResponse:
        await self._require(context, "AuthenticatePassword")
        result = await self._id.authenticate_password(request.target, request.password)
        return authenticated_to_pb(result)

    @rpc_errors_to_status
    async def OpenSession(self, request: pb.OpenSessionRequest, context: Ctx) -> pb.OpenedSession:
        await self._require(context, "OpenSession", gateway_id=request.gateway_id)
        opened = await self._id.open_session(
            principal_from_pb(request.principal),
            SessionRequest(
                client_ip=request.client_ip,
                client_port=request.client_port,
                gateway_id=request.gateway_id,
                boot_id=request.boot_id,
                kind=request.kind or "session",
                ttl=request.ttl_seconds or 86400,
                recording=_opt(request, "recording"),
            ),
        )
        return pb.OpenedSession(session_id=opened.session_id, token=opened.token)

    @rpc_errors_to_status
    async def EndStaleSessions(
        self, request: pb.EndStaleSessionsRequest, context: Ctx
    ) -> pb.SessionList:
        await self._require(context, "EndStaleSessions", gateway_id=request.gateway_id)
        ended = await self._id.end_stale_sessions(request.gateway_id, request.boot_id)
        return pb.SessionList(sessions=[session_to_pb(s) for s in ended])

    @rpc_errors_to_status
    async def Heartbeat(self, request: pb.HeartbeatRequest, context: Ctx) -> pb.HeartbeatResponse:
        await self._require(context, "Heartbeat", gateway_id=request.gateway_id)
        beat = await self._id.heartbeat(
            request.gateway_id,
            request.boot_id,
            stale_after=request.stale_after,
            stopping=request.stopping,
        )
        return pb.HeartbeatResponse(alive=beat.alive, ended=[session_to_pb(s) for s in beat.ended])

    @rpc_errors_to_status
    async def SetRoles(self, request: pb.SetRolesRequest, context: Ctx) -> pb.User:
        await self._require(context, "SetRoles")
        return user_to_pb(await self._id.set_roles(request.name, list(request.roles)))

    @rpc_errors_to_status
    async def KillSession(self, request: pb.KillSessionRequest, context: Ctx) -> pb.Session:
        await self._require(context, "KillSession")
        info = await self._id.kill_session(
            request.id, by=request.by, message=request.message or KILL_MESSAGE
        )
        return session_to_pb(info)

    @rpc_errors_to_status
    async def LookupKey(self, request: pb.LookupKeyRequest, context: Ctx) -> pb.LookupKeyResponse:
        await self._require(context, "LookupKey")
        user = await self._id.lookup_key(request.username, request.fingerprint)
        if user is None:
            return pb.LookupKeyResponse(found=False)
        return pb.LookupKeyResponse(found=True, user=user_to_pb(user))

    @rpc_errors_to_status
    async def KeyOwner(self, request: pb.KeyOwnerRequest, context: Ctx) -> pb.KeyOwnerResponse:
        await self._require(context, "KeyOwner")
        owner = await self._id.key_owner(request.fingerprint)
        return pb.KeyOwnerResponse() if owner is None else pb.KeyOwnerResponse(username=owner)

    @rpc_errors_to_status
    async def GetUser(self, request: pb.UserRef, context: Ctx) -> pb.User:
        await self._require(context, "GetUser")
        return user_to_pb(await self._id.get_user(request.name))

    @rpc_errors_to_status
    async def ListUsers(self, request: pb.Empty, context: Ctx) -> pb.UserList:
        await self._require(context, "ListUsers")
        return pb.UserList(users=[user_to_pb(u) for u in await self._id.list_users()])

    @rpc_errors_to_status
    async def AddUser(self, request: pb.AddUserRequest, context: Ctx) -> pb.User:
        await self._require(context, "AddUser")
        user = await self._id.add_user(
            request.name,
            display_name=request.display_name,
            email=request.email,
            roles=list(request.roles),
            groups=list(request.groups),
            ssh_keys=list(request.ssh_keys),
            password=_opt(request, "password"),
        )
        return user_to_pb(user)

    @rpc_errors_to_status
    async def SetDisabled(self, request: pb.SetDisabledRequest, context: Ctx) -> pb.User:
        await self._require(context, "SetDisabled")
        return user_to_pb(await self._id.set_disabled(request.name, request.disabled))

    @rpc_errors_to_status
    async def RemoveUser(self, request: pb.UserRef, context: Ctx) -> pb.Empty:
        await self._require(context, "RemoveUser")
        await self._id.remove_user(request.name)
        return pb.Empty()

    @rpc_errors_to_status
    async def AddKey(self, request: pb.AddKeyRequest, context: Ctx) -> pb.SshKey:
        await self._require(context, "AddKey")
        return key_to_pb(await self._id.add_key(request.name, request.public_key))

    @rpc_errors_to_status
    async def RemoveKey(self, request: pb.RemoveKeyRequest, context: Ctx) -> pb.Empty:
        await self._require(context, "RemoveKey")
        await self._id.remove_key(request.name, request.fingerprint)
        return pb.Empty()

    @rpc_errors_to_status
    async def SetPassword(self, request: pb.SetPasswordRequest, context: Ctx) -> pb.Empty:
        await self._require(context, "SetPassword")
        await self._id.set_password(request.name, _opt(request, "password"))
        return pb.Empty()

    @rpc_errors_to_status
    async def VerifyPassword(self, request: pb.CheckSecretRequest, context: Ctx) -> pb.CheckResult:
        await self._require(context, "VerifyPassword")
        return pb.CheckResult(ok=await self._id.verify_password(request.name, request.secret))

    @rpc_errors_to_status
    async def EnableTotp(self, request: pb.EnableTotpRequest, context: Ctx) -> pb.TotpEnrollment:
        await self._require(context, "EnableTotp")
        enrollment = await self._id.enable_totp(request.name, replace=request.replace)
        return pb.TotpEnrollment(secret=enrollment.secret, uri=enrollment.uri)

    @rpc_errors_to_status
    async def DisableTotp(self, request: pb.UserRef, context: Ctx) -> pb.Empty:
        await self._require(context, "DisableTotp")
        await self._id.disable_totp(request.name)
        return pb.Empty()

    @rpc_errors_to_status
    async def VerifyTotp(self, request: pb.CheckSecretRequest, context: Ctx) -> pb.CheckResult:
        await self._require(context, "VerifyTotp")
        return pb.CheckResult(ok=await self._id.verify_totp(request.name, request.secret))

    @rpc_errors_to_status
    async def IssueToken(self, request: pb.IssueTokenRequest, context: Ctx) -> pb.Token:
        if not request.HasField("session_id"):  # session tokens are the gateway's business
            await self._require(context, "IssueToken", rule=UNBOUND_ISSUE)
        else:
            await self._require_owner(context, "IssueToken", request.session_id)
        token = await self._id.issue_token(
            request.username,
            session_id=_opt(request, "session_id"),
            ttl=_opt(request, "ttl_seconds"),
            audience=_opt(request, "audience"),
        )
        return pb.Token(token=token)

    @rpc_errors_to_status
    async def VerifyToken(self, request: pb.VerifyTokenRequest, context: Ctx) -> pb.Claims:
        await self._require(context, "VerifyToken")
        claims = await self._id.verify_token(request.token, audience=_opt(request, "audience"))
        return pb.Claims(claims_json=claims_to_json(claims))

    @rpc_errors_to_status
    async def LoginOidc(self, request: pb.OidcLoginRequest, context: Ctx) -> pb.OidcLoginResponse:
        # the ID token is the credential (verified against the provider's JWKS), and the
        # caller the one who asked for it: the CLI (admin socket), never another service
        await self._require(context, "LoginOidc")
        login = await self._id.login_oidc(request.id_token, nonce=_opt(request, "nonce"))
        return pb.OidcLoginResponse(user=user_to_pb(login.user), token=login.token)

    @rpc_errors_to_status
    async def GetJwks(self, request: pb.Empty, context: Ctx) -> pb.Jwks:
        await self._require(context, "GetJwks")
        return pb.Jwks(jwks_json=json.dumps(self._id.jwks()))

    @rpc_errors_to_status
    async def AddWorkspace(self, request: pb.AddWorkspaceRequest, context: Ctx) -> pb.Workspace:
        await self._require(context, "AddWorkspace")
        try:
            config = json.loads(request.config_json or "{}")
        except ValueError as exc:
            raise InvalidInput("config", f"not valid JSON: {exc}") from None
        ws = await self._id.add_workspace(
            request.name, owner=request.owner, backend=request.backend or "local", config=config
        )
        return workspace_to_pb(ws)

    @rpc_errors_to_status
    async def GetWorkspace(self, request: pb.WorkspaceRef, context: Ctx) -> pb.Workspace:
        await self._require(context, "GetWorkspace")
        return workspace_to_pb(await self._id.get_workspace(request.name))

    @rpc_errors_to_status
    async def ListWorkspaces(
        self, request: pb.ListWorkspacesRequest, context: Ctx
    ) -> pb.WorkspaceList:
        await self._require(context, "ListWorkspaces")
        found = await self._id.list_workspaces(owner=_opt(request, "owner"))
        return pb.WorkspaceList(workspaces=[workspace_to_pb(w) for w in found])

    @rpc_errors_to_status
    async def DefaultWorkspace(self, request: pb.UserRef, context: Ctx) -> pb.Workspace:
        await self._require(context, "DefaultWorkspace")
        return workspace_to_pb(await self._id.default_workspace(request.name))

    @rpc_errors_to_status
    async def RemoveWorkspace(self, request: pb.WorkspaceRef, context: Ctx) -> pb.Empty:
        await self._require(context, "RemoveWorkspace")
        await self._id.remove_workspace(request.name)
        return pb.Empty()

    @rpc_errors_to_status
    async def StartSession(self, request: pb.StartSessionRequest, context: Ctx) -> pb.Session:
        # the session is the starting gateway's (the one id its certificate names), or any
        # gateway certificate could end it or mint tokens bound to it; the admin's own none
        owner = "" if exempt(context) else _certificate_gateway_id(context)
        await self._require(context, "StartSession", gateway_id=None if exempt(context) else owner)
        info = await self._id.start_session(
            request.id,
            username=request.username,
            workspace=request.workspace,
            client_ip=request.client_ip,
            client_port=request.client_port,
            gateway_id=owner,
        )
        return session_to_pb(info)

    @rpc_errors_to_status
    async def EndSession(self, request: pb.EndSessionRequest, context: Ctx) -> pb.Session:
        await self._require_owner(context, "EndSession", request.id)
        info = await self._id.end_session(
            request.id,
            exit_status=_opt(request, "exit_status"),
            bytes_in=request.bytes_in,
            bytes_out=request.bytes_out,
            recording=_opt(request, "recording"),
            reason=request.reason,
        )
        return session_to_pb(info)

    @rpc_errors_to_status
    async def GetSession(self, request: pb.SessionRef, context: Ctx) -> pb.Session:
        await self._require(context, "GetSession")
        return session_to_pb(await self._id.get_session(request.id))

    @rpc_errors_to_status
    async def FindSessions(self, request: pb.FindSessionsRequest, context: Ctx) -> pb.SessionList:
        await self._require(context, "FindSessions")
        found = await self._id.find_sessions(request.prefix, limit=request.limit or 21)
        return pb.SessionList(sessions=[session_to_pb(s) for s in found])

    @rpc_errors_to_status
    async def ListSessions(self, request: pb.ListSessionsRequest, context: Ctx) -> pb.SessionList:
        await self._require(context, "ListSessions")
        found = await self._id.list_sessions(
            active_only=request.active_only,
            username=_opt(request, "username"),
            limit=request.limit or 1000,
        )
        return pb.SessionList(sessions=[session_to_pb(s) for s in found])

    @rpc_errors_to_status
    async def IsSessionLive(self, request: pb.SessionRef, context: Ctx) -> pb.CheckResult:
        await self._require(context, "IsSessionLive")
        return pb.CheckResult(ok=await self._id.is_session_live(request.id))


def _ttl_seconds(ttl: int | str | timedelta | None) -> int | None:
    if ttl is None:
        return None
    from stockade.core import parse_duration

    return int(parse_duration(ttl, field="ttl").total_seconds())


class IdentityClient:
    """:class:`IdentityService`'s interface over a gRPC channel."""

    def __init__(self, channel: aio.Channel, *, target: str, timeout: float = 10.0) -> None:
        self._stub = identity_pb2_grpc.IdentityStub(channel)
        self._target = target
        self._timeout = timeout
        self._jwks: dict[str, Any] | None = None

    async def _call(self, pending: Awaitable[T]) -> T:
        try:
            return await pending
        except aio.AioRpcError as exc:
            raise from_rpc_error(exc, service="identity", target=self._target) from None

    async def authenticate_key(self, target: str, fingerprint: str) -> Principal | AuthFailure:
        reply = await self._call(
            self._stub.AuthenticateKey(
                pb.AuthenticateKeyRequest(target=target, fingerprint=fingerprint),
                timeout=self._timeout,
            )
        )
        return authenticated_from_pb(reply)

    async def authenticate_password(self, target: str, password: str) -> Principal | AuthFailure:
        reply = await self._call(
            self._stub.AuthenticatePassword(
                pb.AuthenticatePasswordRequest(target=target, password=password),
                timeout=self._timeout,
            )
        )
        return authenticated_from_pb(reply)

    async def open_session(self, principal: Principal, request: SessionRequest) -> OpenedSession:
        reply = await self._call(
            self._stub.OpenSession(
                pb.OpenSessionRequest(
                    principal=principal_to_pb(principal),
                    client_ip=request.client_ip,
                    client_port=request.client_port,
                    gateway_id=request.gateway_id,
                    boot_id=request.boot_id,
                    kind=request.kind,
                    ttl_seconds=request.ttl,
                    recording=request.recording,
                ),
                timeout=self._timeout,
            )
        )
        return OpenedSession(session_id=reply.session_id, token=reply.token)

    async def end_stale_sessions(self, gateway_id: str, boot_id: str) -> list[SessionInfo]:
        reply = await self._call(
            self._stub.EndStaleSessions(
                pb.EndStaleSessionsRequest(gateway_id=gateway_id, boot_id=boot_id),
                timeout=self._timeout,
            )
        )
        return [session_from_pb(s) for s in reply.sessions]

    async def heartbeat(
        self, gateway_id: str, boot_id: str, *, stale_after: float, stopping: bool = False
    ) -> Heartbeat:
        reply = await self._call(
            self._stub.Heartbeat(
                pb.HeartbeatRequest(
                    gateway_id=gateway_id,
                    boot_id=boot_id,
                    stale_after=stale_after,
                    stopping=stopping,
                ),
                timeout=self._timeout,
            )
        )
        return Heartbeat(alive=reply.alive, ended=tuple(session_from_pb(s) for s in reply.ended))

    async def set_roles(self, name: str, roles: Iterable[str]) -> User:
        reply = await self._call(
            self._stub.SetRoles(
                pb.SetRolesRequest(name=name, roles=list(roles)), timeout=self._timeout
            )
        )
        return user_from_pb(reply)

    async def kill_session(
        self, session_id: str, *, by: str = "", message: str = KILL_MESSAGE
    ) -> SessionInfo:
        reply = await self._call(
            self._stub.KillSession(
                pb.KillSessionRequest(id=session_id, by=by, message=message),
                timeout=self._timeout,
            )
        )
        return session_from_pb(reply)

    async def lookup_key(self, username: str, fingerprint: str) -> User | None:
        reply = await self._call(
            self._stub.LookupKey(
                pb.LookupKeyRequest(username=username, fingerprint=fingerprint),
                timeout=self._timeout,
            )
        )
        return user_from_pb(reply.user) if reply.found else None

    async def key_owner(self, fingerprint: str) -> str | None:
        reply = await self._call(
            self._stub.KeyOwner(pb.KeyOwnerRequest(fingerprint=fingerprint), timeout=self._timeout)
        )
        return reply.username if reply.HasField("username") else None

    async def get_user(self, name: str) -> User:
        reply = await self._call(self._stub.GetUser(pb.UserRef(name=name), timeout=self._timeout))
        return user_from_pb(reply)

    async def list_users(self) -> list[User]:
        reply = await self._call(self._stub.ListUsers(pb.Empty(), timeout=self._timeout))
        return [user_from_pb(u) for u in reply.users]

    async def add_user(
        self,
        name: str,
        *,
        display_name: str = "",
        email: str = "",
        roles: Iterable[str] = (),
        groups: Iterable[str] = (),
        ssh_keys: Sequence[str] = (),
        password: str | None = None,
    ) -> User:
        request = pb.AddUserRequest(
            name=name,
            display_name=display_name,
            email=email,
            roles=list(roles),
            groups=list(groups),
            ssh_keys=list(ssh_keys),
        )
        if password is not None:
            request.password = password
        return user_from_pb(await self._call(self._stub.AddUser(request, timeout=self._timeout)))

    async def set_disabled(self, name: str, disabled: bool) -> User:
        reply = await self._call(
            self._stub.SetDisabled(
                pb.SetDisabledRequest(name=name, disabled=disabled), timeout=self._timeout
            )
        )
        return user_from_pb(reply)

    async def remove_user(self, name: str) -> None:
        await self._call(self._stub.RemoveUser(pb.UserRef(name=name), timeout=self._timeout))

    async def add_key(self, name: str, line: str) -> SshKey:
        reply = await self._call(
            self._stub.AddKey(pb.AddKeyRequest(name=name, public_key=line), timeout=self._timeout)
        )
        return key_from_pb(reply)

    async def remove_key(self, name: str, fingerprint: str) -> None:
        await self._call(
            self._stub.RemoveKey(
                pb.RemoveKeyRequest(name=name, fingerprint=fingerprint), timeout=self._timeout
            )
        )

    async def set_password(self, name: str, password: str | None) -> None:
        request = pb.SetPasswordRequest(name=name)
        if password is not None:
            request.password = password
        await self._call(self._stub.SetPassword(request, timeout=self._timeout))

    async def verify_password(self, name: str, password: str) -> bool:
        reply = await self._call(
            self._stub.VerifyPassword(
                pb.CheckSecretRequest(name=name, secret=password), timeout=self._timeout
            )
        )
        return reply.ok

    async def enable_totp(self, name: str, *, replace: bool = True) -> TotpEnrollment:
        request = pb.EnableTotpRequest(name=name, replace=replace)
        reply = await self._call(self._stub.EnableTotp(request, timeout=self._timeout))
        return TotpEnrollment(secret=reply.secret, uri=reply.uri)

    async def disable_totp(self, name: str) -> None:
        await self._call(self._stub.DisableTotp(pb.UserRef(name=name), timeout=self._timeout))

    async def verify_totp(self, name: str, code: str) -> bool:
        reply = await self._call(
            self._stub.VerifyTotp(
                pb.CheckSecretRequest(name=name, secret=code), timeout=self._timeout
            )
        )
        return reply.ok

    async def issue_token(
        self,
        username: str,
        *,
        session_id: str | None = None,
        ttl: int | str | timedelta | None = None,
        audience: str | None = None,
    ) -> str:
        request = pb.IssueTokenRequest(username=username)
        if session_id is not None:
            request.session_id = session_id
        seconds = _ttl_seconds(ttl)
        if seconds is not None:
            request.ttl_seconds = seconds
        if audience is not None:
            request.audience = audience
        return (await self._call(self._stub.IssueToken(request, timeout=self._timeout))).token

    async def verify_token(self, token: str, *, audience: str | None = None) -> Claims:
        request = pb.VerifyTokenRequest(token=token)
        if audience is not None:
            request.audience = audience
        reply = await self._call(self._stub.VerifyToken(request, timeout=self._timeout))
        return claims_from_json(reply.claims_json)

    async def login_oidc(self, id_token: str, *, nonce: str | None = None) -> OidcLogin:
        """:meth:`IdentityService.login_oidc` over gRPC."""
        request = pb.OidcLoginRequest(id_token=id_token)
        if nonce is not None:
            request.nonce = nonce
        reply = await self._call(self._stub.LoginOidc(request, timeout=self._timeout))
        claims = await self.verify_token(reply.token)
        return OidcLogin(user=user_from_pb(reply.user), token=reply.token, claims=claims)

    async def fetch_jwks(self) -> dict[str, Any]:
        """The public JWKS (``jwks()`` of the in-process service)."""
        reply = await self._call(self._stub.GetJwks(pb.Empty(), timeout=self._timeout))
        jwks: dict[str, Any] = json.loads(reply.jwks_json)
        return jwks

    async def add_workspace(
        self,
        name: str,
        *,
        owner: str,
        backend: str = "local",
        config: dict[str, Any] | None = None,
    ) -> Workspace:
        request = pb.AddWorkspaceRequest(
            name=name, owner=owner, backend=backend, config_json=json.dumps(config or {})
        )
        return workspace_from_pb(
            await self._call(self._stub.AddWorkspace(request, timeout=self._timeout))
        )

    async def get_workspace(self, name: str) -> Workspace:
        reply = await self._call(
            self._stub.GetWorkspace(pb.WorkspaceRef(name=name), timeout=self._timeout)
        )
        return workspace_from_pb(reply)

    async def list_workspaces(self, *, owner: str | None = None) -> list[Workspace]:
        request = pb.ListWorkspacesRequest()
        if owner is not None:
            request.owner = owner
        reply = await self._call(self._stub.ListWorkspaces(request, timeout=self._timeout))
        return [workspace_from_pb(w) for w in reply.workspaces]

    async def default_workspace(self, username: str) -> Workspace:
        reply = await self._call(
            self._stub.DefaultWorkspace(pb.UserRef(name=username), timeout=self._timeout)
        )
        return workspace_from_pb(reply)

    async def remove_workspace(self, name: str) -> None:
        await self._call(
            self._stub.RemoveWorkspace(pb.WorkspaceRef(name=name), timeout=self._timeout)
        )

    async def start_session(
        self,
        session_id: str,
        *,
        username: str,
        workspace: str,
        client_ip: str,
        client_port: int,
    ) -> SessionInfo:
        request = pb.StartSessionRequest(
            id=session_id,
            username=username,
            workspace=workspace,
            client_ip=client_ip,
            client_port=client_port,
        )
        return session_from_pb(
            await self._call(self._stub.StartSession(request, timeout=self._timeout))
        )

    async def end_session(
        self,
        session_id: str,
        *,
        exit_status: int | None = None,
        bytes_in: int = 0,
        bytes_out: int = 0,
        recording: str | None = None,
        reason: str = "",
    ) -> SessionInfo:
        request = pb.EndSessionRequest(
            id=session_id, bytes_in=bytes_in, bytes_out=bytes_out, reason=reason
        )
        if exit_status is not None:
            request.exit_status = exit_status
        if recording is not None:
            request.recording = recording
        return session_from_pb(
            await self._call(self._stub.EndSession(request, timeout=self._timeout))
        )

    async def get_session(self, session_id: str) -> SessionInfo:
        reply = await self._call(
            self._stub.GetSession(pb.SessionRef(id=session_id), timeout=self._timeout)
        )
        return session_from_pb(reply)

    async def list_sessions(
        self, *, active_only: bool = False, username: str | None = None, limit: int = 1000
    ) -> list[SessionInfo]:
        request = pb.ListSessionsRequest(active_only=active_only, limit=limit)
        if username is not None:
            request.username = username
        reply = await self._call(self._stub.ListSessions(request, timeout=self._timeout))
        return [session_from_pb(s) for s in reply.sessions]

    async def find_sessions(self, prefix: str, *, limit: int = 21) -> list[SessionInfo]:
        request = pb.FindSessionsRequest(prefix=prefix, limit=limit)
        reply = await self._call(self._stub.FindSessions(request, timeout=self._timeout))
        return [session_from_pb(s) for s in reply.sessions]

    async def is_session_live(self, session_id: str) -> bool:
        reply = await self._call(
            self._stub.IsSessionLive(pb.SessionRef(id=session_id), timeout=self._timeout)
        )
        return reply.ok

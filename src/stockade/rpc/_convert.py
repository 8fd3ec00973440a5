"""Identity's dataclasses <-> protobuf messages. Times travel as RFC 3339 strings."""

from __future__ import annotations

import json
from datetime import datetime

from stockade.identity import AuthFailure, Claims, Principal, SessionInfo, SshKey, User, Workspace

from ._gen import identity_pb2 as pb

__all__ = [
    "authenticated_from_pb",
    "authenticated_to_pb",
    "claims_from_json",
    "claims_to_json",
    "key_from_pb",
    "key_to_pb",
    "principal_from_pb",
    "principal_to_pb",
    "session_from_pb",
    "session_to_pb",
    "user_from_pb",
    "user_to_pb",
    "workspace_from_pb",
    "workspace_to_pb",
]


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def key_to_pb(key: SshKey) -> pb.SshKey:
    return pb.SshKey(
        fingerprint=key.fingerprint,
        key_type=key.key_type,
        bits=key.bits,
        comment=key.comment,
        public_key=key.public_key,
        created_at=key.created_at.isoformat(),
    )


def key_from_pb(msg: pb.SshKey) -> SshKey:
    return SshKey(
        fingerprint=msg.fingerprint,
        key_type=msg.key_type,
        bits=msg.bits,
        comment=msg.comment,
        public_key=msg.public_key,
        created_at=_time(msg.created_at),
    )


def user_to_pb(user: User) -> pb.User:
    return pb.User(
        name=user.name,
        display_name=user.display_name,
        email=user.email,
        roles=list(user.roles),
        groups=list(user.groups),
        disabled=user.disabled,
        keys=[key_to_pb(k) for k in user.keys],
        has_password=user.has_password,
        totp_enabled=user.totp_enabled,
        created_at=user.created_at.isoformat(),
    )


def user_from_pb(msg: pb.User) -> User:
    return User(
        name=msg.name,
        display_name=msg.display_name,
        email=msg.email,
        roles=tuple(msg.roles),
        groups=tuple(msg.groups),
        disabled=msg.disabled,
        has_password=msg.has_password,
        totp_enabled=msg.totp_enabled,
        created_at=_time(msg.created_at),
        keys=tuple(key_from_pb(k) for k in msg.keys),
    )


def workspace_to_pb(ws: Workspace) -> pb.Workspace:
    return pb.Workspace(
        name=ws.name,
        owner=ws.owner,
        backend=ws.backend,
        config_json=json.dumps(ws.config),
        created_at=ws.created_at.isoformat(),
    )


def workspace_from_pb(msg: pb.Workspace) -> Workspace:
    return Workspace(
        name=msg.name,
        owner=msg.owner,
        backend=msg.backend,
        config=json.loads(msg.config_json or "{}"),
        created_at=_time(msg.created_at),
    )


def session_to_pb(info: SessionInfo) -> pb.Session:
    msg = pb.Session(
        id=info.session_id,
        username=info.username,
        workspace=info.workspace,
        client_ip=info.client_ip,
        client_port=info.client_port,
        started_at=info.started_at.isoformat(),
        bytes_in=info.bytes_in,
        bytes_out=info.bytes_out,
        end_reason=info.end_reason,
        gateway_id=info.gateway_id,
        kind=info.kind,
    )
    if info.fingerprint is not None:
        msg.fingerprint = info.fingerprint
    if info.ended_at is not None:
        msg.ended_at = info.ended_at.isoformat()
    if info.exit_status is not None:
        msg.exit_status = info.exit_status
    if info.recording is not None:
        msg.recording = info.recording
    return msg


def session_from_pb(msg: pb.Session) -> SessionInfo:
    return SessionInfo(
        session_id=msg.id,
        username=msg.username,
        workspace=msg.workspace,
        client_ip=msg.client_ip,
        client_port=msg.client_port,
        started_at=_time(msg.started_at),
        ended_at=_time(msg.ended_at) if msg.HasField("ended_at") else None,
        exit_status=msg.exit_status if msg.HasField("exit_status") else None,
        bytes_in=msg.bytes_in,
        bytes_out=msg.bytes_out,
        recording=msg.recording if msg.HasField("recording") else None,
        end_reason=msg.end_reason,
        gateway_id=msg.gateway_id,
        kind=msg.kind or "session",
        fingerprint=msg.fingerprint if msg.HasField("fingerprint") else None,
    )


def principal_to_pb(principal: Principal) -> pb.Principal:
    msg = pb.Principal(
        username=principal.username,
        roles=list(principal.roles),
        groups=list(principal.groups),
        auth_methods=list(principal.auth_methods),
        workspace=workspace_to_pb(principal.workspace),
        method=principal.method,
        target=principal.target,
    )
    if principal.fingerprint is not None:
        msg.fingerprint = principal.fingerprint
    return msg


def principal_from_pb(msg: pb.Principal) -> Principal:
    return Principal(
        username=msg.username,
        roles=tuple(msg.roles),
        groups=tuple(msg.groups),
        auth_methods=tuple(msg.auth_methods),
        workspace=workspace_from_pb(msg.workspace),
        method=msg.method,
        fingerprint=msg.fingerprint if msg.HasField("fingerprint") else None,
        target=msg.target,
    )


def authenticated_to_pb(result: Principal | AuthFailure) -> pb.AuthenticateResponse:
    if isinstance(result, AuthFailure):
        return pb.AuthenticateResponse(ok=False, reason=result.reason)
    return pb.AuthenticateResponse(ok=True, principal=principal_to_pb(result))


def authenticated_from_pb(msg: pb.AuthenticateResponse) -> Principal | AuthFailure:
    if not msg.ok:
        return AuthFailure(msg.reason or "refused")
    return principal_from_pb(msg.principal)


def claims_to_json(claims: Claims) -> str:
    return json.dumps(
        {
            "jti": claims.jti,
            "sub": claims.sub,
            "iss": claims.iss,
            "aud": claims.aud,
            "iat": claims.iat.isoformat(),
            "nbf": claims.nbf.isoformat() if claims.nbf else None,
            "exp": claims.exp.isoformat(),
            "roles": list(claims.roles),
            "groups": list(claims.groups),
            "sid": claims.sid,
            "kid": claims.kid,
        }
    )


def claims_from_json(text: str) -> Claims:
    data = json.loads(text)
    return Claims(
        jti=data["jti"],
        sub=data["sub"],
        iss=data["iss"],
        aud=data["aud"],
        iat=_time(data["iat"]),
        nbf=_time(data["nbf"]) if data.get("nbf") else None,
        exp=_time(data["exp"]),
        roles=tuple(data["roles"]),
        groups=tuple(data["groups"]),
        sid=data.get("sid"),
        kid=data["kid"],
    )

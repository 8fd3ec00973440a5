"""The identity service: users, SSH keys, passwords, TOTP, workspaces, sessions, tokens.

All state is in the store; every public method runs in one transaction, so a failed call
changes nothing. Management calls raise NotFound / AlreadyExists / InvalidInput; the questions
the gateway and broker ask (:meth:`IdentityService.lookup_key`, ``verify_password``,
``verify_totp``) answer None / False for unknown or disabled users instead of raising, so their
answers do not reveal which users exist.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import secrets
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, delete, func, select, type_coerce
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased, selectinload
from sqlalchemy.types import NullType

from stockade.core.durations import parse_duration
from stockade.core.errors import (
    AlreadyExists,
    InvalidInput,
    NotFound,
    StockadeError,
    TokenRejected,
)
from stockade.core.events import (
    Event,
    EventPublisher,
    IdentityChange,
    IdentityChanged,
    SessionEnded,
    SessionKill,
)
from stockade.core.logging import get_logger
from stockade.core.settings import IdentitySettings
from stockade.store import (
    GatewayRow,
    Prepared,
    SessionRow,
    SshKeyRow,
    Store,
    UserRow,
    WorkspaceRow,
)

from ._gateways import (
    GATEWAY_LOST,
    beating_boots,
    check_boot,
    record_heartbeat,
    silent_beyond_timeout,
)
from ._keys import ParsedKey, parse_public_key
from ._oidc import OIDC_GROUP, OidcIdentity, OidcLogin, OidcVerifier
from ._passwords import (
    PasswordHasher,
    TotpEnrollment,
    check_password,
    new_totp_secret,
    provisioning_uri,
    totp_match,
)
from ._target import parse_target
from ._tokens import Claims, KeyRing
from ._types import (
    AuthFailure,
    Heartbeat,
    OpenedSession,
    Principal,
    SessionInfo,
    SessionRequest,
    SshKey,
    User,
    Workspace,
)
from ._validation import (
    check_backend,
    check_config,
    check_email,
    check_endpoint,
    check_labels,
    check_session_id,
    check_text,
    check_username,
    check_workspace,
)

__all__ = ["IdentityService"]

_log = get_logger("stockade.identity")

#: The end reason of the sessions a workspace removal ended.
WORKSPACE_REMOVED = "workspace_removed"

#: What the user of a killed session reads.
_KILL_MESSAGE = "session terminated by an administrator"


def _key(row: SshKeyRow) -> SshKey:
    return SshKey(
        fingerprint=row.fingerprint,
        key_type=row.key_type,
        bits=row.bits,
        comment=row.comment,
        public_key=row.public_key,
        created_at=row.created_at,
    )


def _user(row: UserRow) -> User:
    return User(
        name=row.name,
        display_name=row.display_name,
        email=row.email,
        roles=tuple(row.roles),
        groups=tuple(row.groups),
        disabled=row.disabled,
        has_password=row.password_hash is not None,
        totp_enabled=row.totp_secret is not None,
        created_at=row.created_at,
        keys=tuple(_key(k) for k in row.keys),
    )


def _workspace(row: WorkspaceRow, owner: str) -> Workspace:
    return Workspace(
        name=row.name,
        owner=owner,
        backend=row.backend,
        config=dict(row.config),
        created_at=row.created_at,
    )


def _session(row: SessionRow) -> SessionInfo:
    return SessionInfo(
        session_id=row.id,
        username=row.username,
        workspace=row.workspace,
        client_ip=row.client_ip,
        client_port=row.client_port,
        started_at=row.started_at,
        ended_at=row.ended_at,
        exit_status=row.exit_status,
        bytes_in=row.bytes_in,
        bytes_out=row.bytes_out,
        recording=row.recording,
        end_reason=row.end_reason,
        gateway_id=row.gateway_id,
        kind=row.kind,
        fingerprint=row.fingerprint,
    )


def _key_row(parsed: ParsedKey) -> SshKeyRow:
    return SshKeyRow(
        fingerprint=parsed.fingerprint,
        key_type=parsed.key_type,
        bits=parsed.bits,
        comment=parsed.comment,
        public_key=parsed.public_key,
        created_at=datetime.now(UTC),
    )


@dataclasses.dataclass(frozen=True, slots=True)
class _LoginQueries:
    """The questions of the login path, each one indexed statement run on the driver (no ORM
    objects built): the gateway asks them for every credential, the broker for every token."""

    lookup_key: Prepared
    """The user's columns and each of their keys (one row per key), when ``fingerprint`` is
    one of the keys of ``name``."""
    authenticate: Prepared
    """The target user, the owner of ``fingerprint`` and the workspace ``workspace`` with its
    owner (NULL when there is none)."""
    token_check: Prepared
    """The subject's roles, groups and state, and the session ``sid`` (NULL when none)."""
    session_live: Prepared
    key_owner: Prepared

    @classmethod
    def prepare(cls, store: Store) -> _LoginQueries:
        presented, owned = aliased(SshKeyRow), aliased(SshKeyRow)
        lookup = (
            select(UserRow.name, UserRow.display_name, UserRow.email, UserRow.roles,
                   UserRow.groups, UserRow.disabled, UserRow.password_hash.is_not(None),
                   UserRow.totp_secret.is_not(None), UserRow.created_at, owned.fingerprint,
                   owned.key_type, owned.bits, owned.comment, owned.public_key, owned.created_at)
            .join(presented, presented.user_id == UserRow.id)
            .join(owned, owned.user_id == UserRow.id)
            .where(presented.fingerprint == bindparam("fingerprint"),
                   UserRow.name == bindparam("name"))
            .order_by(owned.id)
        )  # fmt: skip
        key, key_user, ws_owner = aliased(SshKeyRow), aliased(UserRow), aliased(UserRow)
        owner = (
            select(key_user.name)
            .join(key, key.user_id == key_user.id)
            .where(key.fingerprint == bindparam("fingerprint"))
            .scalar_subquery()
        )
        authenticate = (
            select(UserRow.name, UserRow.roles, UserRow.groups, UserRow.disabled,
                   UserRow.password_hash, UserRow.totp_secret.is_not(None), owner,
                   WorkspaceRow.name, WorkspaceRow.backend, WorkspaceRow.config,
                   WorkspaceRow.created_at, ws_owner.name)
            .select_from(UserRow)
            .outerjoin(WorkspaceRow, WorkspaceRow.name == bindparam("workspace"))
            .outerjoin(ws_owner, ws_owner.id == WorkspaceRow.owner_id)
            .where(UserRow.name == bindparam("user"))
        )  # fmt: skip
        # the session's gateway boot too: a boot silent beyond its own timeout ends its
        # sessions' tokens (judged by the database's clock on PostgreSQL, see _gateways)
        # (stale_after is read as the driver gives it: a float, or None)
        clock = [func.now()] if store.dialect == "postgresql" else []
        token_check = (
            select(UserRow.roles, UserRow.groups, UserRow.disabled, SessionRow.id,
                   SessionRow.username, SessionRow.ended_at, GatewayRow.seen_at,
                   GatewayRow.ended_at, type_coerce(GatewayRow.stale_after, NullType()), *clock)
            .select_from(UserRow)
            .outerjoin(SessionRow, SessionRow.id == bindparam("sid"))
            .outerjoin(GatewayRow, GatewayRow.boot_id == SessionRow.boot_id)
            .where(UserRow.name == bindparam("sub"))
        )  # fmt: skip
        session_live = select(SessionRow.ended_at).where(SessionRow.id == bindparam("sid"))
        key_owner = (
            select(UserRow.name)
            .join(SshKeyRow, SshKeyRow.user_id == UserRow.id)
            .where(SshKeyRow.fingerprint == bindparam("fingerprint"))
        )
        return cls(
            lookup_key=store.prepare(lookup),
            authenticate=store.prepare(authenticate),
            token_check=store.prepare(token_check),
            session_live=store.prepare(session_live),
            key_owner=store.prepare(key_owner),
        )


class IdentityService:
    """Users, keys, secrets, workspaces, sessions and tokens, kept in ``store``.

    ``password_hasher`` defaults to argon2id with production parameters; tests may pass a
    cheaper :class:`PasswordHasher`. Token times come from ``keyring``'s clock.

    With a ``publisher`` (the bus), every change to a user is published as
    :class:`~stockade.core.events.IdentityChanged`, and revocations (user disabled or removed,
    a key removed) end the affected live sessions in the store at once (their tokens stop
    verifying) and publish a :class:`~stockade.core.events.SessionKill` for each, so the gateway
    holding them closes them.
    """

    def __init__(
        self,
        *,
        store: Store,
        settings: IdentitySettings,
        keyring: KeyRing,
        password_hasher: PasswordHasher | None = None,
        publisher: EventPublisher | None = None,
    ) -> None:
        self._store = store
        self._settings = settings
        self._keyring = keyring
        self._hasher = password_hasher or PasswordHasher()
        self._publisher = publisher
        self._oidc: OidcVerifier | None = None
        self._queries = _LoginQueries.prepare(store)

    def __repr__(self) -> str:
        return f"IdentityService(store={self._store!r}, keyring={self._keyring!r})"

    # -- users -------------------------------------------------------------------------------

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
        """Create a user with their keys (all or nothing) and a ``local`` workspace named after
        them when that name is free. AlreadyExists names the user holding a duplicate key."""
        check_username(name)
        row = UserRow(
            name=name,
            display_name=check_text(display_name, field="display_name", limit=128),
            email=check_email(email),
            roles=check_labels(roles, field="roles"),
            groups=check_labels(groups, field="groups"),
            disabled=False,
            created_at=datetime.now(UTC),
        )
        parsed = self._parse_keys(ssh_keys)
        if password is not None:
            row.password_hash = await self._hash(password)
        row.keys = [_key_row(p) for p in parsed]
        async with self._store.transaction() as session:
            if await self._find_user(session, name) is not None:
                raise AlreadyExists("user", name)
            for key in parsed:
                await self._check_key_free(session, key.fingerprint)
            session.add(row)
            await session.flush()
            if await self._find_workspace(session, name) is None:
                session.add(
                    WorkspaceRow(
                        name=name,
                        owner_id=row.id,
                        backend="local",
                        config={},
                        created_at=datetime.now(UTC),
                    )
                )
            user = _user(row)
        _log.info("user added", user=name, keys=len(parsed), roles=user.roles)
        return user

    async def get_user(self, name: str) -> User:
        """The user called ``name``; NotFound if there is none."""
        check_username(name)
        async with self._store.transaction(readonly=True) as session:
            return _user(await self._user(session, name))

    async def list_users(self) -> list[User]:
        """Every user, by name."""
        async with self._store.transaction(readonly=True) as session:
            rows = await session.scalars(
                select(UserRow).options(selectinload(UserRow.keys)).order_by(UserRow.name)
            )
            return [_user(row) for row in rows]

    async def set_disabled(self, name: str, disabled: bool) -> User:
        """Disable (or enable) a user: a disabled user's keys, password, TOTP and tokens fail."""
        check_username(name)
        async with self._store.transaction() as session:
            row = await self._user(session, name)
            row.disabled = disabled
            user = _user(row)
            ended = await _end_live(session, name, "revoked") if disabled else []
        _log.info("user disabled" if disabled else "user enabled", user=name, ended=len(ended))
        await self._changed(name, "user_disabled" if disabled else "user_enabled", user.roles)
        await self._kill(ended, "the user was disabled")
        return user

    async def remove_user(self, name: str) -> None:
        """Delete a user with their keys and workspaces; their session records stay."""
        check_username(name)
        async with self._store.transaction() as session:
            row = await self._user(session, name)
            await session.delete(row)
            ended = await _end_live(session, name, "revoked")
        _log.info("user removed", user=name, ended=len(ended))
        await self._changed(name, "user_removed", ())
        await self._kill(ended, "the user was removed")

    async def set_roles(self, name: str, roles: Iterable[str]) -> User:
        """Replace ``name``'s roles. Live sessions are re-decided by the gateways that hold them
        (an :class:`IdentityChanged` event); one whose ``ssh.connect`` is now denied is closed."""
        check_username(name)
        checked = check_labels(roles, field="roles")
        async with self._store.transaction() as session:
            row = await self._user(session, name)
            row.roles = checked
            user = _user(row)
        _log.info("roles set", user=name, roles=user.roles)
        await self._changed(name, "roles_changed", user.roles)
        return user

    # -- SSH keys ----------------------------------------------------------------------------

    async def add_key(self, name: str, line: str) -> SshKey:
        """Register one ``authorized_keys`` line for ``name``."""
        check_username(name)
        parsed = parse_public_key(line, min_rsa_bits=self._settings.min_rsa_bits)
        async with self._store.transaction() as session:
            row = await self._user(session, name)
            await self._check_key_free(session, parsed.fingerprint)
            key = _key_row(parsed)
            row.keys.append(key)
            await session.flush()
            result = _key(key)
        _log.info("ssh key added", user=name, fingerprint=parsed.fingerprint)
        return result

    async def remove_key(self, name: str, fingerprint: str) -> None:
        """Remove ``name``'s key with ``fingerprint``; NotFound unless that user has it."""
        check_username(name)
        async with self._store.transaction() as session:
            row = await self._user(session, name)
            for key in row.keys:
                if key.fingerprint == fingerprint:
                    row.keys.remove(key)
                    break
            else:
                raise NotFound("ssh key", f"{fingerprint} of user {name}")
            ended = await _end_live(session, name, "revoked", fingerprint=fingerprint)
            roles = tuple(row.roles)
        _log.info("ssh key removed", user=name, fingerprint=fingerprint, ended=len(ended))
        await self._changed(name, "key_removed", roles, fingerprint=fingerprint)
        await self._kill(ended, "the key this session logged in with was removed")

    async def lookup_key(self, username: str, fingerprint: str) -> User | None:
        """The user when ``fingerprint`` is a key of ``username`` and the user is enabled;
        None otherwise (unknown user, someone else's key, disabled user, malformed input)."""
        if not isinstance(username, str) or len(username) > 32 or len(fingerprint) > 64:
            return None
        rows = await self._store.fetch(
            self._queries.lookup_key, {"name": username, "fingerprint": fingerprint}
        )
        if not rows or rows[0][5]:  # unknown, someone else's key, or disabled
            return None
        first = rows[0]
        return User(
            name=first[0],
            display_name=first[1],
            email=first[2],
            roles=tuple(first[3]),
            groups=tuple(first[4]),
            disabled=False,
            has_password=bool(first[6]),
            totp_enabled=bool(first[7]),
            created_at=first[8],
            keys=tuple(
                SshKey(fingerprint=row[9], key_type=row[10], bits=row[11], comment=row[12],
                       public_key=row[13], created_at=row[14])
                for row in rows
            ),
        )  # fmt: skip

    async def key_owner(self, fingerprint: str) -> str | None:
        """The name of the user holding the key ``fingerprint``, or None (one indexed query).

        Lets the gateway tell ``key_not_owned`` from ``unknown_key`` in failure events."""
        if not isinstance(fingerprint, str) or len(fingerprint) > 64:
            return None
        rows = await self._store.fetch(self._queries.key_owner, {"fingerprint": fingerprint})
        return str(rows[0][0]) if rows else None

    # -- logins (the gateway's questions) ----------------------------------------------------

    async def authenticate_key(self, target: str, fingerprint: str) -> Principal | AuthFailure:
        """Who may log in as ``target`` (``alice`` or ``alice+ws2``) with the key ``fingerprint``,
        answered in one transaction: the :class:`Principal` (user, roles, workspace, bound to this
        target and key), or an :class:`AuthFailure` whose reason is for logs only."""
        if not isinstance(fingerprint, str) or len(fingerprint) > 64:
            return AuthFailure("unknown_key")
        return await self._authenticate(target, "publickey", fingerprint=fingerprint)

    async def authenticate_password(self, target: str, password: str) -> Principal | AuthFailure:
        """As :meth:`authenticate_key` for a password. The argon2 check runs whatever exists
        (a dummy hash for unknown users, users without a password and malformed targets), so the
        cost of an answer reveals nothing."""
        return await self._authenticate(target, "password", password=password)

    async def _authenticate(
        self, target: str, method: str, *, fingerprint: str | None = None, password: str = ""
    ) -> Principal | AuthFailure:
        try:
            parsed = parse_target(target)
        except InvalidInput:
            if method == "password":
                await asyncio.to_thread(self._hasher.verify, None, password)
            return AuthFailure("invalid_username")
        failure: AuthFailure | None = None
        hashed: str | None = None
        # one statement: the user, the key's owner, the workspace and its owner
        rows = await self._store.fetch(
            self._queries.authenticate,
            {
                "user": parsed.user,
                "fingerprint": fingerprint if method == "publickey" else None,
                "workspace": parsed.workspace or parsed.user,
            },
        )
        row = rows[0] if rows else None
        if row is None:
            failure = AuthFailure("unknown_user")
        elif row[3]:
            failure = AuthFailure("user_disabled")
        elif method == "publickey":
            owner = row[6]
            if owner is None:
                failure = AuthFailure("unknown_key")
            elif owner != parsed.user:
                failure = AuthFailure("key_not_owned")
        else:
            hashed = row[4]
            if hashed is None:
                failure = AuthFailure("no_password")
        workspace: Workspace | None = None
        if failure is None and row is not None:
            ws_owner = row[11]
            if row[7] is not None and (parsed.workspace is not None or ws_owner == row[0]):
                workspace = Workspace(name=row[7], owner=ws_owner, backend=row[8],
                                      config=dict(row[9]), created_at=row[10])  # fmt: skip
            elif row[7] is None and parsed.workspace is None:
                workspace = None  # the default workspace is created below
            else:
                failure = AuthFailure("unknown_workspace")
        if method == "password":
            ok = await asyncio.to_thread(self._hasher.verify, hashed, password)
            if failure is None and not ok:
                failure = AuthFailure("bad_password")
        if failure is not None:
            return failure
        assert row is not None
        if workspace is None:
            try:
                workspace = await self.default_workspace(parsed.user)
            except (NotFound, AlreadyExists):
                return AuthFailure("unknown_workspace")
        methods = ["publickey"]
        if row[4] is not None:
            methods.append("password")
        if row[5]:
            methods.append("totp")
        principal = Principal(
            username=row[0],
            roles=tuple(row[1]),
            groups=tuple(row[2]),
            auth_methods=tuple(methods),
            workspace=workspace,
            method=method,
            fingerprint=fingerprint,
            target=str(parsed),
        )
        return principal

    async def open_session(self, principal: Principal, request: SessionRequest) -> OpenedSession:
        """Record a live session of ``principal`` and issue its token (``sid`` bound), in one
        transaction: the user must still exist and be enabled, a key login's key must still be
        theirs, and their roles and groups must still be the principal's (the login was decided
        with them). :class:`InvalidInput` names what changed."""
        ip, port = check_endpoint(request.client_ip, request.client_port)
        lifetime = min(int(request.ttl), self._keyring.max_ttl)
        if lifetime <= 0:
            raise InvalidInput("ttl", "must be positive")
        session_id = "s-" + secrets.token_hex(12)
        gateway_id = check_text(request.gateway_id, field="gateway_id", limit=128)
        boot_id = check_text(request.boot_id, field="boot_id", limit=64)
        async with self._store.transaction() as session:
            await check_boot(session, gateway_id, boot_id)
            row = await session.scalar(select(UserRow).where(UserRow.name == principal.username))
            if row is None or row.disabled:
                raise InvalidInput("username", f"user {principal.username!r} may not log in now")
            if principal.fingerprint is not None:
                owner = await session.scalar(
                    select(SshKeyRow.user_id).where(SshKeyRow.fingerprint == principal.fingerprint)
                )
                if owner != row.id:
                    raise InvalidInput("fingerprint", "the key is no longer registered")
            if tuple(row.roles) != tuple(principal.roles) or tuple(row.groups) != tuple(
                principal.groups
            ):
                # the login was decided with roles that are no longer the user's (changed
                # between authenticate and now: the roles_changed event found no session)
                raise InvalidInput("roles", "the user's roles changed during the login")
            # the workspace the login was decided with must still be there, as it was: a
            # removal committed meanwhile found no session of this login to end (nor did its
            # gateway kill, sent before the connection was registered), so the session would
            # outlive its workspace. Locked, so a removal waits for this session and ends it.
            held = await session.scalar(
                select(WorkspaceRow)
                .where(WorkspaceRow.name == principal.workspace.name)
                .with_for_update(read=True)
            )
            if held is None or not _same_workspace(held, principal.workspace):
                raise InvalidInput("workspace", "the workspace was removed during the login")
            session.add(
                SessionRow(
                    id=session_id,
                    username=row.name,
                    workspace=principal.workspace.name,
                    client_ip=ip,
                    client_port=port,
                    started_at=_now(),
                    bytes_in=0,
                    bytes_out=0,
                    end_reason="",
                    gateway_id=gateway_id,
                    boot_id=boot_id,
                    kind=request.kind if request.kind in ("session", "connection") else "session",
                    fingerprint=principal.fingerprint,
                    recording=(
                        None
                        if request.recording is None
                        else check_text(
                            request.recording.replace("{session_id}", session_id),
                            field="recording",
                            limit=4096,
                        )
                    ),
                )
            )
            token = self._session_token(row, session_id, lifetime)
        return OpenedSession(session_id=session_id, token=token)

    async def kill_session(
        self,
        session_id: str,
        *,
        by: str = "",
        message: str = "session terminated by an administrator",
    ) -> SessionInfo:
        """End a live session now: the row ends (reason ``killed``, its token stops verifying)
        and a :class:`SessionKill` tells the gateway holding it to close it with ``message``."""
        info = await self.end_session(session_id, reason="killed")
        await self._publish(
            SessionKill(session_id=session_id, reason="killed", message=message[:256], by=by[:128])
        )
        _log.info("session killed", session=session_id, by=by)
        return info

    async def end_stale_sessions(self, gateway_id: str, boot_id: str) -> list[SessionInfo]:
        """End the sessions ``gateway_id`` left open in earlier boots that no longer beat
        (reason ``crashed``); returns them so the gateway publishes their ``session.ended``.

        A gateway sweeps when it starts. A boot of the same gateway id that still beats (within
        the timeout it declared) is spared: a second replica given the same id, or whoever holds
        that gateway's certificate, must not end live sessions by claiming a new boot. A boot
        killed moments ago still counts as beating until its timeout passes; then any live
        gateway's heartbeat (this one's included) ends its sessions (``gateway_lost``)."""
        gateway_id = check_text(gateway_id, field="gateway_id", limit=128)
        boot_id = check_text(boot_id, field="boot_id", limit=64)
        if not gateway_id or not boot_id:
            raise InvalidInput("boot_id", "a sweep names its gateway and boot")
        async with self._store.transaction() as session:
            spared = await beating_boots(self._store, session, gateway_id, besides=boot_id)
            rows = list(
                await session.scalars(
                    select(SessionRow)
                    .where(
                        SessionRow.gateway_id == gateway_id,
                        SessionRow.boot_id != boot_id,
                        SessionRow.boot_id.not_in(spared),
                        SessionRow.ended_at.is_(None),
                    )
                    .with_for_update()
                )
            )
            now = _now()
            for row in rows:
                row.ended_at = now
                row.end_reason = "crashed"
            ended = [_session(row) for row in rows]
        if ended:
            _log.warning("stale sessions ended", gateway=gateway_id, count=len(ended))
        if spared:
            _log.info("live boots spared by the sweep", gateway=gateway_id, boots=len(spared))
        return ended

    async def heartbeat(
        self, gateway_id: str, boot_id: str, *, stale_after: float, stopping: bool = False
    ) -> Heartbeat:
        """Record that boot ``boot_id`` of ``gateway_id`` is alive (or, ``stopping``, ended on
        purpose) and end the sessions of every boot whose last beat is older than
        ``stale_after`` seconds (reason ``gateway_lost``; their tokens stop verifying). Each
        ended session gets its ``session.ended`` and a ``session.kill`` (should its gateway
        still be alive behind a partition, it closes them)."""
        beat = await record_heartbeat(
            self._store,
            gateway_id,
            boot_id,
            stale_after=stale_after,
            stopping=stopping,
            to_info=_session,
        )
        if beat.ended:
            _log.warning("sessions of dead gateways ended", by=gateway_id, count=len(beat.ended))
        for info in beat.ended:
            await self._publish(
                SessionEnded(
                    session_id=info.session_id, username=info.username, reason=GATEWAY_LOST
                )
            )
            await self._publish(
                SessionKill(
                    session_id=info.session_id,
                    reason=GATEWAY_LOST,
                    message="the gateway holding this session stopped answering",
                    by="identity",
                )
            )
        return beat

    def _session_token(self, row: UserRow, session_id: str, lifetime: int) -> str:
        now = int(self._keyring.now())
        return self._keyring.sign(
            {
                "jti": secrets.token_urlsafe(16),
                "sub": row.name,
                "iss": self._settings.issuer,
                "aud": self._settings.audience,
                "iat": now,
                "nbf": now,
                "exp": now + lifetime,
                "roles": list(row.roles),
                "groups": list(row.groups),
                "sid": session_id,
            }
        )

    async def _publish(self, event: Event) -> None:
        if self._publisher is None:
            return
        try:
            await self._publisher.publish(event)
        except StockadeError as exc:
            _log.warning("identity event not published", subject=event.subject, error=str(exc))

    async def _changed(
        self,
        name: str,
        change: IdentityChange,
        roles: Iterable[str],
        *,
        fingerprint: str | None = None,
    ) -> None:
        await self._publish(
            IdentityChanged(
                username=name, change=change, roles=list(roles), fingerprint=fingerprint
            )
        )

    async def _kill(self, session_ids: Sequence[str], message: str) -> None:
        for session_id in session_ids:
            await self._publish(
                SessionKill(session_id=session_id, reason="revoked", message=message, by="identity")
            )

    # -- passwords and TOTP ------------------------------------------------------------------

    async def set_password(self, name: str, password: str | None) -> None:
        """Set (or with None, remove) ``name``'s password."""
        check_username(name)
        hashed = None if password is None else await self._hash(password)
        async with self._store.transaction() as session:
            row = await self._user(session, name)
            row.password_hash = hashed
        _log.info("password set" if hashed else "password removed", user=name)

    async def verify_password(self, name: str, password: str) -> bool:
        """True when ``name`` exists, is enabled, has a password and ``password`` matches it.

        Unknown users cost as much as known ones. A hash made with older parameters is
        replaced by one with the current parameters after a successful check.
        """
        hashed: str | None = None
        if isinstance(name, str) and len(name) <= 32:
            async with self._store.transaction(readonly=True) as session:
                row = await self._find_user(session, name)
                if row is not None and not row.disabled:
                    hashed = row.password_hash
        ok = await asyncio.to_thread(self._hasher.verify, hashed, password)
        if ok and hashed is not None and self._hasher.needs_rehash(hashed):
            rehashed = await self._hash(password)
            async with self._store.transaction() as session:
                row = await self._find_user(session, name)
                if row is not None and row.password_hash == hashed:
                    row.password_hash = rehashed
        return ok

    async def enable_totp(self, name: str, *, replace: bool = True) -> TotpEnrollment:
        """Give ``name`` a new TOTP secret and return its enrollment, once.

        With ``replace`` False an enrolled secret is kept (InvalidInput ``totp``): checked in
        the transaction that writes, row locked, so of two enrolments at once only one wins
        and no administrator is shown a secret that another one has already replaced.
        """
        check_username(name)
        secret = new_totp_secret()
        async with self._store.transaction() as session:
            row = await session.scalar(
                select(UserRow).where(UserRow.name == name).with_for_update()
            )
            if row is None:
                raise NotFound("user", name)
            if row.totp_secret is not None and not replace:
                raise InvalidInput(
                    "totp", f"{name} already has TOTP enrolled; pass --replace to change it"
                )
            row.totp_secret = self._keyring.seal(secret, context=f"totp:{name}")
            row.totp_last_step = None
        _log.info("totp enabled", user=name)
        return provisioning_uri(secret, account=name, issuer=self._settings.issuer)

    async def disable_totp(self, name: str) -> None:
        """Remove ``name``'s TOTP secret."""
        check_username(name)
        async with self._store.transaction() as session:
            row = await self._user(session, name)
            row.totp_secret = None
            row.totp_last_step = None
        _log.info("totp disabled", user=name)

    async def verify_totp(self, name: str, code: str) -> bool:
        """True when ``code`` is ``name``'s current TOTP code (±1 step) and was not used before.

        False for unknown or disabled users and users without TOTP.
        """
        if not isinstance(name, str) or len(name) > 32 or not isinstance(code, str):
            return False
        async with self._store.transaction() as session:
            row = await session.scalar(
                select(UserRow).where(UserRow.name == name).with_for_update()
            )
            if row is None or row.disabled or row.totp_secret is None:
                return False
            secret = self._keyring.unseal(row.totp_secret, context=f"totp:{name}")
            step = totp_match(secret, code, now=self._keyring.now(), after_step=row.totp_last_step)
            if step is None:
                return False
            row.totp_last_step = step
            return True

    # -- workspaces --------------------------------------------------------------------------

    async def add_workspace(
        self,
        name: str,
        *,
        owner: str,
        backend: str = "local",
        config: dict[str, Any] | None = None,
    ) -> Workspace:
        """Register a workspace owned by ``owner``."""
        check_workspace(name)
        check_username(owner, field="owner")
        check_backend(backend)
        cfg = check_config(config or {})
        async with self._store.transaction() as session:
            user = await self._user(session, owner)
            existing = await self._find_workspace(session, name)
            if existing is not None:
                raise AlreadyExists("workspace", name, detail=f"owned by {existing[1]}")
            row = WorkspaceRow(
                name=name, owner_id=user.id, backend=backend, config=cfg, created_at=_now()
            )
            session.add(row)
            await session.flush()
            result = _workspace(row, owner)
        _log.info("workspace added", workspace=name, owner=owner, backend=backend)
        return result

    async def get_workspace(self, name: str) -> Workspace:
        """The workspace called ``name``; NotFound if there is none."""
        check_workspace(name)
        async with self._store.transaction(readonly=True) as session:
            found = await self._find_workspace(session, name)
            if found is None:
                raise NotFound("workspace", name)
            return _workspace(*found)

    async def list_workspaces(self, *, owner: str | None = None) -> list[Workspace]:
        """Every workspace (of ``owner`` when given), by name."""
        query = select(WorkspaceRow, UserRow.name).join(
            UserRow, WorkspaceRow.owner_id == UserRow.id
        )
        if owner is not None:
            query = query.where(UserRow.name == check_username(owner, field="owner"))
        async with self._store.transaction(readonly=True) as session:
            rows = await session.execute(query.order_by(WorkspaceRow.name))
            return [_workspace(ws, owner_name) for ws, owner_name in rows]

    async def remove_workspace(self, name: str) -> None:
        """Delete the workspace record ``name`` and end every live session in it.

        A removed workspace must take its sessions with it: their holders would otherwise keep
        working in a workspace that no longer exists (and, once it is re-created for someone
        else, next to the new owner). The sessions end in this transaction (reason
        ``workspace_removed``: their tokens stop verifying when it commits); each gets its
        :class:`SessionKill` (the broker refuses its tokens at once), and one kill naming the
        workspace reaches every gateway, which closes what it holds there (a session whose
        record failed included) and drops the workspace's network namespace."""
        check_workspace(name)
        async with self._store.transaction() as session:
            result = await session.execute(delete(WorkspaceRow).where(WorkspaceRow.name == name))
            if getattr(result, "rowcount", 0) == 0:
                raise NotFound("workspace", name)
            ended = await _end_live_in(session, name, WORKSPACE_REMOVED)
        _log.info("workspace removed", workspace=name, ended=len(ended))
        message = f"workspace {name} was removed"
        for session_id in ended:
            await self._publish(
                SessionKill(
                    session_id=session_id, reason=WORKSPACE_REMOVED, message=message, by="identity"
                )
            )
        await self._publish(
            SessionKill(
                session_id="*",
                removed_workspace=name,
                reason=WORKSPACE_REMOVED,
                message=message,
                by="identity",
            )
        )

    async def default_workspace(self, username: str) -> Workspace:
        """``username``'s own workspace (named like them), created as ``local`` when missing.

        AlreadyExists when a workspace of that name belongs to someone else.
        """
        check_username(username)
        async with self._store.transaction() as session:
            found = await self._find_workspace(session, username)
            if found is None:
                user = await self._user(session, username)
                row = WorkspaceRow(
                    name=username, owner_id=user.id, backend="local", config={}, created_at=_now()
                )
                session.add(row)
                await session.flush()
                return _workspace(row, username)
            if found[1] != username:
                raise AlreadyExists("workspace", username, detail=f"owned by {found[1]}")
            return _workspace(*found)

    # -- sessions ----------------------------------------------------------------------------

    async def start_session(
        self,
        session_id: str,
        *,
        username: str,
        workspace: str,
        client_ip: str,
        client_port: int,
        gateway_id: str = "",
    ) -> SessionInfo:
        """Record a live session of an existing user; AlreadyExists for a reused id.

        The workspace name is recorded as given (a backend may reach workspaces that have no
        record here). ``gateway_id`` is the gateway whose session it is (over gRPC, the one its
        certificate names: only that gateway may end it or mint tokens bound to it).
        """
        gateway_id = check_text(gateway_id, field="gateway_id", limit=128)
        check_session_id(session_id)
        check_username(username)
        check_workspace(workspace)
        ip, port = check_endpoint(client_ip, client_port)
        async with self._store.transaction() as session:
            await self._user(session, username)
            if await session.get(SessionRow, session_id) is not None:
                raise AlreadyExists("session", session_id)
            row = SessionRow(
                id=session_id,
                username=username,
                workspace=workspace,
                client_ip=ip,
                client_port=port,
                started_at=_now(),
                bytes_in=0,
                bytes_out=0,
                end_reason="",
                gateway_id=gateway_id,
            )
            session.add(row)
            await session.flush()
            return _session(row)

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
        """Mark a session ended; tokens bound to it stop verifying. Ending an ended session
        changes nothing and returns it as it is (the first end wins)."""
        check_session_id(session_id)
        reason = check_text(reason, field="reason", limit=256)
        if recording is not None:
            recording = check_text(recording, field="recording", limit=4096)
        if min(bytes_in, bytes_out) < 0:
            raise InvalidInput("bytes", "byte counts cannot be negative")
        async with self._store.transaction() as session:
            row = await session.get(SessionRow, session_id, with_for_update=True)
            if row is None:
                raise NotFound("session", session_id)
            if row.ended_at is None:
                row.ended_at = _now()
                row.exit_status = exit_status
                row.bytes_in = bytes_in
                row.bytes_out = bytes_out
                if recording is not None:  # "" clears the path stored at start: nothing recorded
                    row.recording = recording or None
                row.end_reason = reason
            return _session(row)

    async def get_session(self, session_id: str) -> SessionInfo:
        """The session ``session_id``; NotFound if there is none."""
        check_session_id(session_id)
        async with self._store.transaction(readonly=True) as session:
            row = await session.get(SessionRow, session_id)
            if row is None:
                raise NotFound("session", session_id)
            return _session(row)

    async def list_sessions(
        self, *, active_only: bool = False, username: str | None = None, limit: int = 1000
    ) -> list[SessionInfo]:
        """Sessions, newest first; only live ones with ``active_only``."""
        query = select(SessionRow)
        if active_only:
            query = query.where(SessionRow.ended_at.is_(None))
        if username is not None:
            query = query.where(SessionRow.username == check_username(username))
        query = query.order_by(SessionRow.started_at.desc(), SessionRow.id).limit(limit)
        async with self._store.transaction(readonly=True) as session:
            return [_session(row) for row in await session.scalars(query)]

    async def find_sessions(self, prefix: str, *, limit: int = 21) -> list[SessionInfo]:
        """Up to ``limit`` (1-1000) sessions whose id starts with ``prefix``, ordered by id.

        The prefix is compared character for character (``substr``, never ``LIKE``: ``%`` and
        ``_`` are no wildcards, case matters), so a caller that names one session by a unique
        prefix never gets another; any number of sessions costs one bounded answer.
        """
        check_session_id(prefix)  # the characters of an id, 1-64 of them
        if not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise InvalidInput("limit", "must be 1 to 1000")
        query = (
            select(SessionRow)
            .where(func.substr(SessionRow.id, 1, len(prefix)) == prefix)
            .order_by(SessionRow.id)
            .limit(limit)
        )
        async with self._store.transaction(readonly=True) as session:
            rows = [_session(row) for row in await session.scalars(query)]
        return [info for info in rows if info.session_id.startswith(prefix)]

    async def is_session_live(self, session_id: str) -> bool:
        """True when ``session_id`` was started and not ended."""
        if not isinstance(session_id, str) or len(session_id) > 64:
            return False
        rows = await self._store.fetch(self._queries.session_live, {"sid": session_id})
        return bool(rows) and rows[0][0] is None

    # -- tokens ------------------------------------------------------------------------------

    async def issue_token(
        self,
        username: str,
        *,
        session_id: str | None = None,
        ttl: int | str | timedelta | None = None,
        audience: str | None = None,
    ) -> str:
        """A signed JWT for an enabled user. With ``session_id`` (a live session of that user)
        the token carries ``sid`` and stops verifying when the session ends.

        ``ttl`` defaults to ``settings.token_ttl`` and may not exceed the keyring's ``max_ttl``.
        """
        check_username(username)
        lifetime = self._settings.token_ttl if ttl is None else _seconds(ttl)
        if lifetime > self._keyring.max_ttl:
            raise InvalidInput("ttl", f"at most {self._keyring.max_ttl} seconds")
        aud = check_text(audience, field="audience", limit=256) if audience else None
        async with self._store.transaction(readonly=True) as session:
            user = await self._user(session, username)
            if user.disabled:
                raise InvalidInput("username", f"user {username!r} is disabled")
            if session_id is not None:
                check_session_id(session_id)
                row = await session.get(SessionRow, session_id)
                if row is None or row.username != username:
                    raise NotFound("session", f"{session_id} of user {username}")
                if row.ended_at is not None:
                    raise InvalidInput("session_id", f"session {session_id} has ended")
            roles, groups = list(user.roles), list(user.groups)
        now = int(self._keyring.now())
        claims: dict[str, Any] = {
            "jti": secrets.token_urlsafe(16),
            "sub": username,
            "iss": self._settings.issuer,
            "aud": aud or self._settings.audience,
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
            "roles": roles,
            "groups": groups,
        }
        if session_id is not None:
            claims["sid"] = session_id
        return self._keyring.sign(claims)

    async def verify_token(self, token: str, *, audience: str | None = None) -> Claims:
        """The claims of a valid token, else TokenRejected(reason).

        Beyond signature and claims (see :meth:`KeyRing.decode`): the subject must exist and
        be enabled (``user_disabled``), and a token with ``sid`` needs that session live
        and belonging to the subject (``session_ended``). The returned ``roles`` and ``groups``
        are the user's current ones, not those frozen into the token when it was issued: a role
        taken away counts at once, however long the token lives.
        """
        claims = self._keyring.decode(
            token, issuer=self._settings.issuer, audience=audience or self._settings.audience
        )
        rows = await self._store.fetch(
            self._queries.token_check, {"sub": claims.sub, "sid": claims.sid}
        )
        if not rows or rows[0][2]:
            raise TokenRejected("user_disabled")
        roles, groups, _disabled, sid, owner, ended_at, *boot = rows[0]
        if claims.sid is not None:
            if sid is None or ended_at is not None or owner != claims.sub:
                raise TokenRejected("session_ended")
            if silent_beyond_timeout(*boot):
                raise TokenRejected("session_ended", "its gateway stopped beating")
        return dataclasses.replace(claims, roles=tuple(roles), groups=tuple(groups))

    async def login_oidc(self, id_token: str, *, nonce: str | None = None) -> OidcLogin:
        """Log in with an ID token of the configured OIDC provider (``identity.oidc``).

        The token is verified (:class:`OidcVerifier`: signature against the provider's JWKS,
        ``iss``, ``aud``, ``exp``/``nbf``/``iat`` and, for the authorization-code flow, the
        ``nonce`` sent with the request; the device-code flow passes None). The provider's
        groups map to roles through ``oidc.group_roles``; the user is created at the first
        login (marked with the group ``oidc``) and their roles replaced at every login. A local
        user of the same name (no ``oidc`` group) is never taken over. Raises
        :class:`TokenRejected` with the reason; returns the user and a Stockade token.
        """
        settings = self._settings.oidc
        if not settings.enabled:
            raise TokenRejected("oidc_disabled", "set identity.oidc.enabled")
        if self._oidc is None:
            self._oidc = OidcVerifier(settings)
        who = await self._oidc.verify(id_token, nonce=nonce)
        if not who.roles and settings.require_role:
            await self._drop_oidc_roles(who)
            raise TokenRejected("no_role", "none of the user's groups maps to a Stockade role")
        try:
            user = await self.get_user(who.username)
        except NotFound:
            if not settings.create_users:
                raise TokenRejected("unknown_user", f"no user {who.username!r}") from None
            try:
                user = await self.add_user(
                    who.username,
                    display_name=who.display_name,
                    email=who.email,
                    roles=who.roles,
                    groups=[OIDC_GROUP],
                )
            except AlreadyExists:  # a concurrent first login made it
                user = await self.get_user(who.username)
        if OIDC_GROUP not in user.groups:
            _log.warning("oidc login refused: local user", user=who.username)
            raise TokenRejected("not_oidc_user", "a local user of that name exists")
        if user.disabled:  # before binding: an unbound disabled user stays unclaimed
            raise TokenRejected("user_disabled")
        await self._bind_oidc_subject(who)
        if tuple(user.roles) != tuple(who.roles):
            user = await self.set_roles(who.username, who.roles)
        token = await self.issue_token(who.username)
        claims = await self.verify_token(token)
        _log.info("oidc login", user=who.username, roles=list(who.roles))
        return OidcLogin(user=user, token=token, claims=claims)

    async def _bind_oidc_subject(self, who: OidcIdentity) -> None:
        """Bind OIDC user ``who.username`` to the provider account (``iss``, ``sub``) of its
        first login, and refuse any other account claiming that name later: usernames are
        the user's to edit at most providers, subjects are not."""
        async with self._store.transaction() as session:
            row = await session.scalar(
                select(UserRow).where(UserRow.name == who.username).with_for_update()
            )
            if row is None:
                raise TokenRejected("unknown_user", f"no user {who.username!r}")
            if row.oidc_subject is None:  # its first OIDC login (or made before r0007)
                row.oidc_subject = who.account
            elif not hmac.compare_digest(row.oidc_subject, who.account):
                _log.warning("oidc login refused: another provider account", user=who.username)
                raise TokenRejected(
                    "subject_mismatch", "that user belongs to another provider account"
                )

    async def _drop_oidc_roles(self, who: OidcIdentity) -> None:
        """A login refused because the groups map to no role still takes away the roles of
        that OIDC user (same provider account): a demotion at the provider must not leave the
        Stockade user, and its live tokens, with its old roles."""
        try:
            user = await self.get_user(who.username)
        except NotFound:
            return
        if OIDC_GROUP not in user.groups or not user.roles:
            return
        async with self._store.transaction() as session:
            row = await session.scalar(select(UserRow).where(UserRow.name == who.username))
            if row is None or (
                row.oidc_subject is not None
                and not hmac.compare_digest(row.oidc_subject, who.account)
            ):
                return
        await self.set_roles(who.username, ())

    def jwks(self) -> dict[str, Any]:
        """The public JWK Set of every signing key that still verifies."""
        return self._keyring.jwks()

    # -- helpers -----------------------------------------------------------------------------

    def _parse_keys(self, lines: Sequence[str]) -> list[ParsedKey]:
        if isinstance(lines, str):
            raise InvalidInput("ssh_keys", "expected a list of key lines, got a string")
        parsed: list[ParsedKey] = []
        for line in lines:
            key = parse_public_key(line, min_rsa_bits=self._settings.min_rsa_bits)
            if any(p.fingerprint == key.fingerprint for p in parsed):
                raise InvalidInput("ssh_keys", f"key {key.fingerprint} is given twice")
            parsed.append(key)
        return parsed

    async def _hash(self, password: str) -> str:
        check_password(password)
        return await asyncio.to_thread(self._hasher.hash, password)

    @staticmethod
    async def _find_user(session: AsyncSession, name: str) -> UserRow | None:
        return await session.scalar(
            select(UserRow).where(UserRow.name == name).options(selectinload(UserRow.keys))
        )

    async def _user(self, session: AsyncSession, name: str) -> UserRow:
        row = await self._find_user(session, name)
        if row is None:
            raise NotFound("user", name)
        return row

    @staticmethod
    async def _find_workspace(session: AsyncSession, name: str) -> tuple[WorkspaceRow, str] | None:
        result = await session.execute(
            select(WorkspaceRow, UserRow.name)
            .join(UserRow, WorkspaceRow.owner_id == UserRow.id)
            .where(WorkspaceRow.name == name)
        )
        found = result.first()
        return None if found is None else (found[0], found[1])

    @staticmethod
    async def _check_key_free(session: AsyncSession, fingerprint: str) -> None:
        owner = await session.scalar(
            select(UserRow.name)
            .join(SshKeyRow, SshKeyRow.user_id == UserRow.id)
            .where(SshKeyRow.fingerprint == fingerprint)
        )
        if owner is not None:
            raise AlreadyExists("ssh key", fingerprint, detail=f"registered to user {owner}")


async def _end_live(
    session: AsyncSession, username: str, reason: str, *, fingerprint: str | None = None
) -> list[str]:
    """End ``username``'s live sessions (those that used ``fingerprint`` when given) in this
    transaction; their tokens stop verifying when it commits. Returns their ids."""
    query = select(SessionRow).where(SessionRow.username == username, SessionRow.ended_at.is_(None))
    if fingerprint is not None:
        query = query.where(SessionRow.fingerprint == fingerprint)
    rows = list(await session.scalars(query.with_for_update()))
    now = _now()
    for row in rows:
        row.ended_at = now
        row.end_reason = reason
    return [row.id for row in rows]


async def _end_live_in(session: AsyncSession, workspace: str, reason: str) -> list[str]:
    """End the live sessions in ``workspace`` (everyone's) in this transaction; their tokens
    stop verifying when it commits. Returns their ids."""
    rows = list(
        await session.scalars(
            select(SessionRow)
            .where(SessionRow.workspace == workspace, SessionRow.ended_at.is_(None))
            .with_for_update()
        )
    )
    now = _now()
    for row in rows:
        row.ended_at = now
        row.end_reason = reason
    return [row.id for row in rows]


def _same_workspace(row: WorkspaceRow, decided: Workspace) -> bool:
    """Whether ``row`` is still the workspace a login was decided with (a workspace removed and
    re-created under its name for someone else, or on another backend, is not)."""
    return (
        row.backend == decided.backend
        and dict(row.config) == dict(decided.config)
        and _naive(row.created_at) == _naive(decided.created_at)
    )


def _naive(at: datetime) -> datetime:
    """``at`` without its zone (SQLite hands back naive UTC times, PostgreSQL aware ones)."""
    return at.astimezone(UTC).replace(tzinfo=None) if at.tzinfo is not None else at


def _now() -> datetime:
    return datetime.now(UTC)


def _seconds(ttl: int | str | timedelta) -> int:
    seconds = parse_duration(ttl, field="ttl").total_seconds()
    if seconds != int(seconds):
        raise InvalidInput("ttl", "whole seconds only")
    return int(seconds)

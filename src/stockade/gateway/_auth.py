"""Authentication of one connection: who is asking, for which workspace, with what credential.

Counting rule (it feeds SSH Shield): exactly one ``stockade.auth.failed`` per rejected credential.
A public key is one credential however often it is presented: OpenSSH first *queries* a key
(no signature) and signs only after the server accepts it, so asyncssh asks
:meth:`ConnectionAuth.check_key` twice for the same key; the verdict is cached per fingerprint and
published once. Each password and each TOTP code is its own attempt. A connection that ends
without success and without any rejected credential (garbage, a stalled handshake, a client that
gives up) publishes exactly one event saying why (``handshake_timeout``, ``protocol_error``,
``no_credentials``, ...).

With ``require_mfa`` in the user's ``ssh.connect`` decision, keyboard-interactive TOTP comes
first and is the only method offered; once the code is right, public key or password finishes
the login (asyncssh has no partial success, and this order keeps the signature check in
asyncssh's hands).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

from stockade.core.errors import NotFound, StockadeError
from stockade.core.events import AuthFailed, AuthSucceeded, Event
from stockade.core.logging import escape_peer, get_logger

from ._policy import Policy
from ._ports import DecisionLike, EventPublisher, IdentityPort, UserLike, WorkspaceLike
from ._target import Target, parse_target

__all__ = ["AuthServices", "ConnectionAuth"]

_log = get_logger("stockade.gateway.auth")


@dataclass
class AuthServices:
    """What every connection's authentication shares."""

    identity: IdentityPort
    policy: Policy
    publisher: EventPublisher
    gateway_id: str
    max_failures: int
    password_auth: bool
    background: Callable[[Coroutine[Any, Any, None]], None]
    """Runs a coroutine in the background (kept referenced, errors logged)."""


@dataclass
class ConnectionAuth:
    """Authentication state and decisions of one connection (the hooks' brain)."""

    services: AuthServices
    conn_id: int
    client_ip: str
    client_port: int
    target: Target | None = None
    user: UserLike | None = None
    workspace: WorkspaceLike | None = None
    connect_decision: DecisionLike | None = None
    method: str = "none"
    mfa_required: bool = False
    mfa_passed: bool = False
    authenticated: bool = False
    auth_begun: bool = False
    failures: int = 0
    close_reason: str | None = None
    problem: str | None = None
    """Why every credential is refused before it is checked (bad username, unknown workspace)."""
    _keys: dict[tuple[str, str], str | None] = field(default_factory=dict)
    """Key verdicts by (username as sent, fingerprint): never reused for another username."""
    _accepted_key: bool = False
    fingerprint: str | None = None
    """The key accepted for the current username (logged on success)."""
    _raw_username: str = ""

    # -- events --------------------------------------------------------------------------

    async def _publish(self, event: Event) -> None:
        try:
            await self.services.publisher.publish(event)
        except StockadeError as exc:
            _log.warning("event_not_published", conn=self.conn_id, error=str(exc))

    def _username_for_event(self) -> str:
        if self.target is not None:
            return self.target.user
        return escape_peer(self._raw_username, 128)

    async def fail(self, method: str, reason: str) -> None:
        """Publish one failure for a rejected credential (or a doomed connection)."""
        self.failures += 1
        _log.info(
            "auth_failed",
            conn=self.conn_id,
            client=self.client_ip,
            user=self._username_for_event(),
            method=method,
            reason=reason,
        )
        await self._publish(
            AuthFailed(
                client_ip=self.client_ip,
                client_port=self.client_port,
                username=self._username_for_event(),
                method=method,
                reason=reason,
                gateway_id=self.services.gateway_id,
            )
        )

    @property
    def too_many_failures(self) -> bool:
        return self.failures >= self.services.max_failures

    def connection_closed(self) -> None:
        """Publish the one failure of a connection that ended without a checked credential."""
        if self.authenticated or self.failures:
            return
        if self.close_reason is not None:
            reason = self.close_reason
        elif self._accepted_key:
            reason = "bad_signature"
        elif self.problem is not None:
            reason = self.problem
        elif self.auth_begun:
            reason = "no_credentials"
        else:
            reason = "handshake_incomplete"
        self.failures += 1
        self.services.background(self.fail(self.method, reason))

    # -- begin ---------------------------------------------------------------------------

    async def begin(self, username: str) -> None:
        """A (new) username: parse the target, find user and workspace, learn require_mfa."""
        self.auth_begun = True
        self._raw_username = username
        self.target = self.user = self.workspace = self.connect_decision = None
        self.problem = None
        self.mfa_required = self.mfa_passed = False
        # A verdict is bound to (username, workspace, fingerprint): a new username starts over,
        # and so does a return to an earlier one (its decision was reset above).
        self._keys.clear()
        self._accepted_key = False
        self.fingerprint = None
        try:
            self.target = parse_target(username)
        except StockadeError as exc:
            _log.info(
                "bad_username", conn=self.conn_id, username=escape_peer(username), error=str(exc)
            )
            self.problem = "invalid_username"
            return
        identity = self.services.identity
        try:
            self.user = await identity.get_user(self.target.user)
        except NotFound:
            self.problem = "unknown_user"
            return
        except StockadeError as exc:
            _log.warning("identity_unavailable", conn=self.conn_id, error=str(exc))
            self.problem = "identity_unavailable"
            return
        if self.user.disabled:
            self.problem = "user_disabled"
            return
        name = self.target.workspace or self.target.user
        try:
            try:
                self.workspace = await identity.get_workspace(name)
            except NotFound:
                if self.target.workspace is not None:
                    raise
                self.workspace = await identity.default_workspace(self.target.user)
        except NotFound:
            _log.info("unknown_workspace", conn=self.conn_id, target=str(self.target))
            self.problem = "unknown_workspace"
            return
        except StockadeError as exc:
            _log.warning("identity_unavailable", conn=self.conn_id, error=str(exc))
            self.problem = "identity_unavailable"
            return
        decision = await self._decide_connect("none")
        self.mfa_required = bool(decision.allow and decision.obligations.get("require_mfa"))

    async def _decide_connect(self, method: str) -> DecisionLike:
        assert self.user is not None
        return await self.services.policy.decide(
            "ssh.connect",
            self.user,
            workspace=self.workspace,
            source_ip=self.client_ip,
            auth_method=method,
            mfa=self.mfa_passed,
        )

    # -- which methods are offered -------------------------------------------------------

    def offers_public_key(self) -> bool:
        return not self.mfa_required or self.mfa_passed

    def offers_password(self) -> bool:
        return self.services.password_auth and (not self.mfa_required or self.mfa_passed)

    def offers_totp(self) -> bool:
        return self.mfa_required and not self.mfa_passed

    # -- credential checks ---------------------------------------------------------------

    async def _admit(self, method: str) -> str | None:
        """After a credential matched: the failure reason from policy, or None to let in."""
        decision = await self._decide_connect(method)
        if not decision.allow:
            return "policy_denied"
        self.connect_decision = decision
        self.method = method
        return None

    async def check_key(self, fingerprint: str) -> bool:
        """Is ``fingerprint`` a key of the target user who may connect? (once per key)"""
        cache_key = (self._raw_username, fingerprint)
        if cache_key in self._keys:
            accepted = self._keys[cache_key] is None
            if accepted:
                self._accepted_key, self.fingerprint = True, fingerprint
            return accepted
        self.method = "publickey"
        reason = await self._key_reason(fingerprint)
        self._keys[cache_key] = reason
        if reason is not None:
            await self.fail("publickey", reason)
            return False
        self._accepted_key, self.fingerprint = True, fingerprint
        return True

    async def _key_reason(self, fingerprint: str) -> str | None:
        if self.problem is not None:
            return self.problem
        assert self.target is not None
        user = await self.services.identity.lookup_key(self.target.user, fingerprint)
        if user is None:
            owner = await self.services.identity.key_owner(fingerprint)
            if owner is not None and owner != self.target.user:
                return "key_not_owned"
            return "unknown_key"
        return await self._admit("publickey")

    async def check_password(self, password: str) -> bool:
        self.method = "password"
        reason = self.problem
        if reason is None:
            assert self.user is not None
            assert self.target is not None
            decision = await self.services.policy.decide(
                "user.auth",
                self.user,
                workspace=None,
                source_ip=self.client_ip,
                auth_method="password",
            )
            if not decision.allow:
                reason = "password_not_allowed"
            elif not await self.services.identity.verify_password(self.target.user, password):
                reason = "bad_password"
            else:
                reason = await self._admit("password")
        if reason is not None:
            await self.fail("password", reason)
            return False
        return True

    async def check_totp(self, code: str) -> bool:
        self.method = "keyboard-interactive"
        reason = self.problem
        if reason is None:
            assert self.target is not None
            if not await self.services.identity.verify_totp(self.target.user, code.strip()):
                reason = "bad_totp"
        if reason is not None:
            await self.fail("keyboard-interactive", reason)
            return False
        self.mfa_passed = True
        return True

    async def succeeded(self) -> None:
        self.authenticated = True
        assert self.target is not None
        _log.info(
            "auth_succeeded",
            conn=self.conn_id,
            client=self.client_ip,
            target=str(self.target),
            method=self.method,
            fingerprint=self.fingerprint if self.method == "publickey" else None,
        )
        await self._publish(
            AuthSucceeded(
                client_ip=self.client_ip,
                client_port=self.client_port,
                username=self.target.user,
                method=self.method,
                gateway_id=self.services.gateway_id,
            )
        )

    @property
    def obligations(self) -> Mapping[str, Any]:
        return {} if self.connect_decision is None else self.connect_decision.obligations

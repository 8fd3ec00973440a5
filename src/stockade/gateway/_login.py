"""Authentication of one connection, as one straight line per credential.

A credential is answered by exactly one identity question (``authenticate_key`` /
``authenticate_password``) and, when identity accepts it, exactly one ``ssh.connect`` decision;
the result is an immutable :class:`Login` bound to the username *and* the credential it was asked
for. asyncssh asks about a public key twice (the unsigned query, then the signed request): the
second question is answered from the verdict of the first only when the username and the
fingerprint are the same; a new username (RFC 4252 lets a client send one in every request)
throws every verdict away.

Counting rule (it feeds SSH Shield): a rejected signature-free key *query* is not a strike (an
agent offering several keys is not an attack) but it counts toward ``max_auth_failures`` as
OpenSSH's MaxAuthTries does; a failed password, a failed TOTP code, and a connection that ends
unauthenticated (reason ``bad_signature`` when a key passed its query but never logged in) are
one strike each, reported as ``stockade.auth.failed`` (through the gateway's failure batcher,
when it has one). asyncssh verifies signatures itself
after a True, so a failed signature is seen only as the same key asked about again: every
repeat after the first (query, then signed request) costs an attempt, so forged signatures are
bounded by ``max_auth_failures`` too.

``require_mfa``: the decision on the first credential says whether a TOTP code must come first;
keyboard-interactive is offered, and a right code lets the next credential through. (OpenSSH
clients try methods in their order of preference, so MFA users set
``PreferredAuthentications=keyboard-interactive,publickey``.)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from stockade.authz import AuthzAPI, Obligations
from stockade.core.errors import StockadeError
from stockade.core.events import AuthFailed, AuthSucceeded, Event, EventPublisher
from stockade.core.logging import escape_peer, get_logger
from stockade.identity import AuthFailure, IdentityAPI, Principal

from ._policy import decide

__all__ = ["Login", "LoginFlow", "LoginServices"]

_log = get_logger("stockade.gateway.login")


@dataclass(frozen=True, slots=True)
class Login:
    """Who is in, where, how, and what policy obliges: decided once, never changed."""

    principal: Principal
    method: str
    mfa: bool
    obligations: Obligations
    client_ip: str
    client_port: int
    conn_id: int

    @property
    def username(self) -> str:
        return self.principal.username

    @property
    def workspace(self) -> str:
        return self.principal.workspace.name


@dataclass
class LoginServices:
    """What every connection's authentication shares (owned by the Gateway)."""

    identity: IdentityAPI
    authz: AuthzAPI
    publisher: EventPublisher
    report_failure: Callable[[AuthFailed], Awaitable[None]]
    """Where strikes go (the gateway's failure batcher, or the publisher); never raises."""
    gateway_id: str
    max_attempts: int
    password_auth: bool
    background: Callable[[Coroutine[Any, Any, None]], None]


@dataclass
class _Verdict:
    username: str
    fingerprint: str
    login: Login | None
    reason: str | None
    uses: int = 0
    """How often the verdict answered again (an honest client asks once more: the signed
    request after its query)."""


@dataclass
class LoginFlow:
    """The authentication state of one connection (the server hooks' brain)."""

    services: LoginServices
    conn_id: int
    client_ip: str
    client_port: int
    username: str = ""
    """The username of the current requests, as the client sent it (escaped when logged)."""
    login: Login | None = None
    """Set once authentication succeeded."""
    attempts: int = 0
    strikes: int = 0
    close_reason: str | None = None
    mfa_required: bool = False
    mfa_passed: bool = False
    began: bool = False
    _verdicts: list[_Verdict] = field(default_factory=list)
    _accepted: Login | None = None
    _failed: bool = False
    timed_out: bool = False
    """The login timeout closed the connection."""

    # -- events ------------------------------------------------------------------------------

    async def _publish(self, event: Event) -> None:
        try:
            await self.services.publisher.publish(event)
        except StockadeError as exc:
            _log.warning("event_not_published", conn=self.conn_id, error=str(exc))

    def _shown_username(self) -> str:
        """The user part of the username (``alice`` of ``alice+ws2``), escaped for events."""
        return escape_peer(self.username.partition("+")[0], 128)

    async def strike(self, method: str, reason: str) -> None:
        """Publish one failure (a strike for SSH Shield)."""
        self.strikes += 1
        if method in ("password", "keyboard-interactive"):
            self._failed = True
        _log.info("auth_failed", conn=self.conn_id, client=self.client_ip,
                  user=self._shown_username(), method=method, reason=reason)  # fmt: skip
        await self.services.report_failure(
            AuthFailed(
                client_ip=self.client_ip,
                client_port=self.client_port,
                username=self._shown_username(),
                method=method,
                reason=reason,
                gateway_id=self.services.gateway_id,
            )
        )

    @property
    def failed_credential(self) -> bool:
        """A password or TOTP code was wrong, or a key passed its query but never logged in
        (a failed signature): PerSourcePenalties' ``authfail``. Bare key queries are not."""
        return self._failed or any(v.reason is None for v in self._verdicts)

    @property
    def exhausted(self) -> bool:
        """True once the connection used up its attempts (OpenSSH's MaxAuthTries)."""
        return self.attempts >= self.services.max_attempts

    def connection_closed(self) -> None:
        """A connection that ends without logging in is one strike, unless a credential of
        it already was (its reason says why it ended)."""
        if self.login is not None or self.strikes:
            return
        if any(v.reason is None for v in self._verdicts):
            reason = "bad_signature"  # a key was accepted, its signature never came or failed
        elif self._verdicts:
            reason = self._verdicts[-1].reason or "no_credentials"
        elif self.close_reason is not None:
            reason = self.close_reason
        elif self.began:
            reason = "no_credentials"
        else:
            reason = "handshake_incomplete"
        self.strikes += 1
        self.services.background(self.strike("publickey" if self._verdicts else "none", reason))

    # -- requests ----------------------------------------------------------------------------

    def begin(self, username: str) -> None:
        """A request names ``username`` (the first, or a new one): every verdict and the MFA
        state belong to the previous username and are dropped."""
        self.began = True
        if username != self.username:
            self.username = username
            self._verdicts.clear()
            self._accepted = None
            self.mfa_required = self.mfa_passed = False

    def offers_public_key(self) -> bool:
        return not self.mfa_required or self.mfa_passed

    def offers_password(self) -> bool:
        return self.services.password_auth and (not self.mfa_required or self.mfa_passed)

    def offers_totp(self) -> bool:
        return not self.mfa_passed

    async def _admit(self, principal: Principal) -> tuple[Login | None, str | None]:
        decision = await decide(
            self.services.authz,
            "ssh.connect",
            principal,
            source_ip=self.client_ip,
            auth_method=principal.method,
            mfa=self.mfa_passed,
        )
        if not decision.allow:
            return None, "policy_denied"
        if decision.obligations.require_mfa and not self.mfa_passed:
            self.mfa_required = True
            return None, "mfa_required"
        login = Login(
            principal=principal,
            method=principal.method,
            mfa=self.mfa_passed,
            obligations=decision.obligations,
            client_ip=self.client_ip,
            client_port=self.client_port,
            conn_id=self.conn_id,
        )
        return login, None

    async def check_key(self, username: str, fingerprint: str) -> bool:
        """May ``username`` log in with the key ``fingerprint``? asyncssh verifies the signature
        itself after a True for the signed request."""
        self.begin(username)
        for verdict in self._verdicts:
            if verdict.username == username and verdict.fingerprint == fingerprint:
                verdict.uses += 1
                if verdict.uses > 1:
                    # asked again after the signed request: a signature that failed (or a
                    # replayed query); each costs an attempt, as in OpenSSH's MaxAuthTries
                    self.attempts += 1
                    if self.exhausted:
                        self._accepted = None
                        return False
                self._accepted = verdict.login
                return verdict.login is not None
        self.attempts += 1
        try:
            result = await self.services.identity.authenticate_key(username, fingerprint)
        except StockadeError as exc:
            _log.warning("identity_unavailable", conn=self.conn_id, error=str(exc))
            result = AuthFailure("identity_unavailable")
        login: Login | None = None
        reason: str | None
        if isinstance(result, AuthFailure):
            reason = result.reason
        else:
            login, reason = await self._admit(result)
        self._verdicts.append(_Verdict(username, fingerprint, login, reason))
        if login is None:
            _log.info("key_refused", conn=self.conn_id, user=self._shown_username(),
                      fingerprint=fingerprint, reason=reason)  # fmt: skip
            return False  # a refused query is no strike; the connection's end may be
        self._accepted = login
        return True

    async def check_password(self, username: str, password: str) -> bool:
        self.begin(username)
        self.attempts += 1
        try:
            result = await self.services.identity.authenticate_password(username, password)
        except StockadeError as exc:
            _log.warning("identity_unavailable", conn=self.conn_id, error=str(exc))
            result = AuthFailure("identity_unavailable")
        login: Login | None = None
        if isinstance(result, AuthFailure):
            reason: str | None = result.reason
        else:
            decision = await decide(
                self.services.authz,
                "user.auth",
                result,
                source_ip=self.client_ip,
                auth_method="password",
            )
            if decision.allow:
                login, reason = await self._admit(result)
            else:
                reason = "password_not_allowed"
        if login is None:
            assert reason is not None
            if reason != "mfa_required":
                await self.strike("password", reason)
            return False
        self._accepted = login
        return True

    async def check_totp(self, username: str, code: str) -> bool:
        """A TOTP code: a right one lets the next credential through (never logs in alone)."""
        self.begin(username)
        self.attempts += 1
        try:
            # the code is the user's, whatever workspace the target names (``mona+lab``)
            ok = await self.services.identity.verify_totp(username.partition("+")[0], code.strip())
        except StockadeError as exc:
            _log.warning("identity_unavailable", conn=self.conn_id, error=str(exc))
            ok = False
        if not ok:
            await self.strike("keyboard-interactive", "bad_totp")
            return False
        self.mfa_passed = True
        # decisions taken before the code was given said "mfa first": ask again
        self._verdicts.clear()
        return True

    def succeeded(self) -> Login:
        """asyncssh accepted the credential (the signature included): the Login (its
        ``stockade.auth.succeeded`` is published in the background)."""
        login = self._accepted
        if login is None or login.principal.target != self.username:
            raise RuntimeError("authentication completed without an accepted credential")
        self.login = login
        _log.info("auth_succeeded", conn=self.conn_id, client=self.client_ip,
                  target=login.principal.target, method=login.method,
                  fingerprint=login.principal.fingerprint, mfa=login.mfa)  # fmt: skip
        self.services.background(
            self._publish(
                AuthSucceeded(
                    client_ip=self.client_ip,
                    client_port=self.client_port,
                    username=login.username,
                    method=login.method,
                    gateway_id=self.services.gateway_id,
                )
            )
        )
        return login

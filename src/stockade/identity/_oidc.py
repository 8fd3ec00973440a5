"""OIDC logins: an ID token of the configured provider, verified, becomes a Stockade user.

:class:`OidcVerifier` checks, in this order, and rejects with the first failed check as the
:class:`~stockade.core.errors.TokenRejected` reason:

==================  ==========================================================================
reason              check
==================  ==========================================================================
``malformed``       a JWS whose header names a ``kid``; at most ``MAX_TOKEN_BYTES``
``bad_algorithm``   its ``alg`` is one of ``oidc.algorithms`` and the key's own (no ``none``,
                    no HMAC with a public key)
``unknown_kid``     the provider's JWKS has that key (refreshed once, rate-limited, if new)
``bad_signature``   the key verifies it (a token signed by another key fails here)
``bad_issuer``      ``iss`` is ``oidc.issuer``
``bad_audience``    ``aud`` names ``oidc.client_id`` (and, with several audiences, ``azp`` is it)
``expired``         ``exp`` is ahead (with ``leeway``)
``not_yet_valid``   ``nbf`` and ``iat`` are behind (with ``leeway``)
``too_old``         ``iat`` is at most ``max_age`` ago
``bad_nonce``       with an expected nonce (authorization-code flow), ``nonce`` equals it;
                    without (device-code flow), the token has no ``nonce``
``no_username``     the username claim passes Stockade's username grammar
==================  ==========================================================================

The provider's ``groups`` map to roles through ``oidc.group_roles`` (the union over the user's
groups); :meth:`IdentityService.login_oidc` then creates or updates the user and issues a
Stockade token.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt

from stockade.core.errors import BackendError, InvalidInput, TokenRejected
from stockade.core.settings import OidcSettings
from stockade.tls import JwksCache

from ._tokens import MAX_TOKEN_BYTES, Claims
from ._types import User
from ._validation import check_username

__all__ = ["OIDC_GROUP", "OidcIdentity", "OidcLogin", "OidcVerifier"]

#: The group that marks a user created by an OIDC login: only such users log in through OIDC,
#: so a provider account can never take over a local user of the same name.
OIDC_GROUP = "oidc"

#: Most groups read from one token (a provider listing thousands is cut, not obeyed blindly).
MAX_GROUPS = 256


@dataclass(frozen=True)
class OidcIdentity:
    """Who a verified ID token says the user is."""

    subject: str
    username: str
    email: str
    display_name: str
    groups: tuple[str, ...]
    roles: tuple[str, ...]
    """The Stockade roles the groups map to."""


@dataclass(frozen=True)
class OidcLogin:
    """A successful OIDC login: the user as now stored and a Stockade token for them."""

    user: User
    token: str
    claims: Claims


class OidcVerifier:
    """Verifies ID tokens of one provider (see the module docstring)."""

    def __init__(
        self,
        settings: OidcSettings,
        *,
        jwks: JwksCache | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not settings.issuer or not settings.client_id:
            raise InvalidInput("identity.oidc", "issuer and client_id must be set")
        self.settings = settings
        self.issuer: str = settings.issuer
        self.client_id: str = settings.client_id
        self._jwks = jwks or JwksCache(
            issuer=settings.issuer,
            jwks_url=settings.jwks_url,
            min_refresh=settings.min_refresh,
            clock=clock,
        )
        self._clock = clock

    def __repr__(self) -> str:
        return f"<OidcVerifier iss={self.issuer} aud={self.client_id}>"

    async def aclose(self) -> None:
        await self._jwks.aclose()

    async def verify(self, id_token: str, *, nonce: str | None) -> OidcIdentity:
        """The identity in ``id_token``, or :class:`TokenRejected` naming the failed check.
        ``nonce``: the one sent in the authorization request (code flow); None for the
        device-code flow, which has none."""
        if not isinstance(id_token, str) or not id_token or len(id_token) > MAX_TOKEN_BYTES:
            raise TokenRejected("malformed", "not an ID token")
        try:
            header = jwt.get_unverified_header(id_token)
        except jwt.InvalidTokenError:
            raise TokenRejected("malformed", "not a JWS") from None
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in self.settings.algorithms:
            raise TokenRejected("bad_algorithm", f"{alg!r} is not accepted")
        if not isinstance(kid, str) or not kid:
            raise TokenRejected("malformed", "the token header has no kid")
        try:
            key = await self._jwks.key(kid)
        except BackendError as exc:
            raise TokenRejected("unknown_kid", str(exc)) from None
        if key is None:
            raise TokenRejected("unknown_kid", f"no key {kid!r} in the provider's JWKS")
        if key.algorithm_name and alg != key.algorithm_name:
            raise TokenRejected("bad_algorithm", f"{alg} does not match key {kid!r}")
        try:
            claims: dict[str, Any] = jwt.decode(
                id_token,
                key=key.key,
                algorithms=[str(alg)],
                options={"verify_exp": False, "verify_nbf": False, "verify_iat": False,
                         "verify_aud": False, "verify_iss": False},
            )  # fmt: skip
        except jwt.InvalidSignatureError:
            raise TokenRejected("bad_signature", f"key {kid!r} does not verify it") from None
        except jwt.InvalidTokenError as exc:
            raise TokenRejected("malformed", str(exc)) from None
        self._check(claims, nonce)
        return self._identity(claims)

    def _check(self, claims: Mapping[str, Any], nonce: str | None) -> None:
        if claims.get("iss") != self.issuer:
            raise TokenRejected("bad_issuer", f"iss is not {self.issuer}")
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if self.client_id not in audiences:
            raise TokenRejected("bad_audience", f"aud does not name {self.client_id}")
        if len(audiences) > 1 and claims.get("azp") != self.client_id:
            raise TokenRejected("bad_audience", "several audiences and azp is not ours")
        now, leeway = self._clock(), self.settings.leeway
        exp, nbf, iat = (_number(claims.get(name)) for name in ("exp", "nbf", "iat"))
        if exp is None:
            raise TokenRejected("expired", "the token has no exp")
        if now > exp + leeway:
            raise TokenRejected("expired", f"exp {int(exp)} is past")
        if "nbf" in claims and (nbf is None or now + leeway < nbf):
            raise TokenRejected("not_yet_valid", "nbf is ahead")
        if iat is None or now + leeway < iat:
            raise TokenRejected("not_yet_valid", "iat is missing or ahead")
        if now - iat > self.settings.max_age + leeway:
            raise TokenRejected("too_old", f"issued more than {self.settings.max_age:g}s ago")
        if nonce is not None:
            got = claims.get("nonce")
            if not isinstance(got, str) or not hmac.compare_digest(got.encode(), nonce.encode()):
                raise TokenRejected("bad_nonce", "nonce does not match the login's")
        elif "nonce" in claims:  # a code-flow token replayed on the nonce-less device path
            raise TokenRejected("bad_nonce", "a token with a nonce on the device-code flow")

    def _identity(self, claims: Mapping[str, Any]) -> OidcIdentity:
        settings = self.settings
        username = claims.get(settings.username_claim)
        if not isinstance(username, str):
            raise TokenRejected("no_username", f"no {settings.username_claim} claim")
        try:
            check_username(username)
        except InvalidInput:
            raise TokenRejected(
                "no_username", f"{settings.username_claim} is not a Stockade username"
            ) from None
        raw = claims.get(settings.groups_claim, [])
        groups = (
            tuple(g for g in raw if isinstance(g, str))[:MAX_GROUPS]
            if isinstance(raw, list)
            else ()
        )
        roles = sorted({role for g in groups for role in settings.group_roles.get(g, [])})
        email = claims.get("email")
        name = claims.get("name")
        return OidcIdentity(
            subject=str(claims.get("sub", "")),
            username=username,
            email=email if isinstance(email, str) and claims.get("email_verified") else "",
            display_name=name[:128] if isinstance(name, str) else "",
            groups=groups,
            roles=tuple(roles),
        )


def _number(value: object) -> float | None:
    """A JSON number claim, else None (``true`` is no timestamp)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)

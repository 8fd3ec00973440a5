"""OIDC logins (issue 14, acceptance 3): an ID token of the configured provider, checked
against its JWKS served on loopback, logs a user in with the roles their ``groups`` map to;
a wrong ``aud``, a wrong ``nonce``, an expired token and one signed by another key are refused.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import ValidationError
from tls.jwks import Issuer, serve_issuer

from stockade.core import TokenRejected
from stockade.core.settings import IdentitySettings, OidcSettings
from stockade.identity import IdentityService, KeyRing, OidcVerifier
from stockade.store import Store

CLIENT_ID = "stockade-console"
NONCE = "n-" + uuid.uuid4().hex


@pytest.fixture
def issuer() -> Iterator[Issuer]:
    with serve_issuer() as issuer:
        yield issuer


def _settings(issuer: Issuer, **oidc: Any) -> IdentitySettings:
    base: dict[str, Any] = {
        "enabled": True,
        "issuer": issuer.url,
        "client_id": CLIENT_ID,
        "group_roles": {"platform-admins": ["admin"], "devs": ["developer"]},
    }
    return IdentitySettings(oidc=OidcSettings(**{**base, **oidc}))


async def _service(tmp_path: Path, settings: IdentitySettings) -> tuple[IdentityService, Store]:
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    await store.migrate()
    return IdentityService(
        store=store, settings=settings, keyring=KeyRing(tmp_path / "keys")
    ), store


@pytest.fixture
async def service(tmp_path: Path, issuer: Issuer) -> AsyncIterator[IdentityService]:
    svc, store = await _service(tmp_path, _settings(issuer))
    try:
        yield svc
    finally:
        await store.close()


def id_token(
    issuer: Issuer,
    *,
    key: ec.EllipticCurvePrivateKey | None = None,
    kid: str | None = None,
    alg: str = "ES256",
    **claims: Any,
) -> str:
    """An ID token as a provider's token endpoint returns it (``claims`` override, None drops)."""
    kid = kid or issuer.published[0]
    now = int(time.time())
    body: dict[str, Any] = {
        "iss": issuer.url,
        "sub": "a1b2c3",
        "aud": CLIENT_ID,
        "iat": now,
        "exp": now + 300,
        "nonce": NONCE,
        "preferred_username": "olga",
        "email": "olga@example.org",
        "email_verified": True,
        "groups": ["platform-admins", "everyone"],
    }
    body.update(claims)
    body = {k: v for k, v in body.items() if v is not None}
    signing = key if key is not None else issuer.keys[kid]
    return jwt.encode(body, signing, algorithm=alg, headers={"kid": kid})


async def test_a_user_whose_groups_map_to_admin_logs_in(
    service: IdentityService, issuer: Issuer
) -> None:
    login = await service.login_oidc(id_token(issuer), nonce=NONCE)
    assert login.user.name == "olga"
    assert login.user.roles == ("admin",)
    assert "oidc" in login.user.groups
    assert login.user.email == "olga@example.org"
    claims = await service.verify_token(login.token)  # a Stockade token, current roles
    assert claims.sub == "olga"
    assert claims.roles == ("admin",)
    assert issuer.jwks_fetches == 1

    # the next login replaces the roles with what the groups say now (the JWKS is cached)
    again = await service.login_oidc(id_token(issuer, groups=["devs"]), nonce=NONCE)
    assert again.user.roles == ("developer",)
    assert (await service.verify_token(login.token)).roles == ("developer",)
    assert issuer.jwks_fetches == 1


async def test_the_device_code_flow_has_no_nonce(service: IdentityService, issuer: Issuer) -> None:
    login = await service.login_oidc(id_token(issuer, nonce=None), nonce=None)
    assert login.user.roles == ("admin",)


def _other_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.mark.parametrize(
    ("make", "nonce", "reason"),
    [
        (lambda i: id_token(i, aud="another-client"), NONCE, "bad_audience"),
        (lambda i: id_token(i, aud=["another-client", "third"]), NONCE, "bad_audience"),
        (lambda i: id_token(i, aud=[CLIENT_ID, "other"], azp="other"), NONCE, "bad_audience"),
        (lambda i: id_token(i, nonce="n-someone-elses"), NONCE, "bad_nonce"),
        (lambda i: id_token(i, nonce=None), NONCE, "bad_nonce"),  # code flow, nonce dropped
        (lambda i: id_token(i, exp=int(time.time()) - 120), NONCE, "expired"),
        (lambda i: id_token(i, exp=None), NONCE, "expired"),
        # signed by another key: under the provider's kid, and under a kid it never published
        (lambda i: id_token(i, key=_other_key()), NONCE, "bad_signature"),
        (lambda i: id_token(i, key=_other_key(), kid="not-published"), NONCE, "unknown_kid"),
        (lambda i: id_token(i, iss="https://evil.example"), NONCE, "bad_issuer"),
        (lambda i: id_token(i, iat=int(time.time()) - 3600), NONCE, "too_old"),
        (lambda i: id_token(i, iat=int(time.time()) + 3600), NONCE, "not_yet_valid"),
        (lambda i: id_token(i, preferred_username="Bad Name"), NONCE, "no_username"),
        (lambda i: id_token(i, groups=["everyone"]), NONCE, "no_role"),
        (lambda i: id_token(i, groups="platform-admins"), NONCE, "no_role"),  # not a list
        (lambda i: "not.a.token", NONCE, "malformed"),
        (
            lambda i: jwt.encode(
                {"sub": "olga"}, "s" * 32, algorithm="HS256", headers={"kid": "k"}
            ),
            NONCE,
            "bad_algorithm",
        ),
    ],
    ids=lambda value: "nonce" if value == NONCE else None,  # ids alike in every worker
)
async def test_refused_id_tokens(
    service: IdentityService, issuer: Issuer, make: Any, nonce: str | None, reason: str
) -> None:
    with pytest.raises(TokenRejected) as info:
        await service.login_oidc(make(issuer), nonce=nonce)
    assert info.value.reason == reason
    assert [u.name for u in await service.list_users()] == []  # nothing created


async def test_alg_none_is_refused(service: IdentityService, issuer: Issuer) -> None:
    unsigned = jwt.encode({"sub": "olga", "iss": issuer.url}, None, algorithm="none",
                          headers={"kid": issuer.published[0]})  # fmt: skip
    with pytest.raises(TokenRejected) as info:
        await service.login_oidc(unsigned, nonce=None)
    assert info.value.reason == "bad_algorithm"


async def test_a_provider_account_cannot_take_over_a_local_user(
    service: IdentityService, issuer: Issuer
) -> None:
    """ATTACK: the provider lets anyone pick ``preferred_username``; a local admin ``root``
    must not become whoever the provider says is ``root``."""
    await service.add_user("root", roles=["admin"])
    with pytest.raises(TokenRejected) as info:
        await service.login_oidc(id_token(issuer, preferred_username="root"), nonce=NONCE)
    assert info.value.reason == "not_oidc_user"
    assert (await service.get_user("root")).roles == ("admin",)


async def test_a_disabled_oidc_user_cannot_log_in(service: IdentityService, issuer: Issuer) -> None:
    await service.login_oidc(id_token(issuer), nonce=NONCE)
    await service.set_disabled("olga", True)
    with pytest.raises(TokenRejected) as info:
        await service.login_oidc(id_token(issuer), nonce=NONCE)
    assert info.value.reason == "user_disabled"


async def test_a_rotated_provider_key_is_fetched_and_invented_kids_are_not(issuer: Issuer) -> None:
    offset = [0.0]
    verifier = OidcVerifier(_settings(issuer).oidc, clock=lambda: time.time() + offset[0])
    try:
        await verifier.verify(id_token(issuer), nonce=NONCE)
        for _ in range(3):  # invented kids do not make us hammer the provider
            with pytest.raises(TokenRejected, match="unknown_kid"):
                await verifier.verify(
                    id_token(issuer, key=_other_key(), kid="x" + uuid.uuid4().hex), nonce=NONCE
                )
        assert issuer.jwks_fetches == 1
        rotated = issuer.add_key()  # the provider rotates its signing key
        offset[0] = 31.0  # past min_refresh: a new kid is looked up once
        who = await verifier.verify(id_token(issuer, kid=rotated, iat=int(time.time() + 31),
                                             exp=int(time.time() + 300)), nonce=NONCE)  # fmt: skip
        assert who.roles == ("admin",)
        assert issuer.jwks_fetches == 2
    finally:
        await verifier.aclose()


async def test_without_create_users_only_known_users_log_in(tmp_path: Path, issuer: Issuer) -> None:
    svc, store = await _service(tmp_path, _settings(issuer, create_users=False))
    try:
        with pytest.raises(TokenRejected) as info:
            await svc.login_oidc(id_token(issuer), nonce=NONCE)
        assert info.value.reason == "unknown_user"
    finally:
        await store.close()


async def test_oidc_logins_are_off_by_default(tmp_path: Path, issuer: Issuer) -> None:
    svc, store = await _service(tmp_path, IdentitySettings())
    try:
        with pytest.raises(TokenRejected) as info:
            await svc.login_oidc(id_token(issuer), nonce=NONCE)
        assert info.value.reason == "oidc_disabled"
    finally:
        await store.close()


def test_enabling_oidc_needs_issuer_and_client_id() -> None:
    with pytest.raises(ValidationError, match="issuer must be set"):
        OidcSettings(enabled=True, client_id="x")
    with pytest.raises(ValidationError, match="client_id must be set"):
        OidcSettings(enabled=True, issuer="https://idp.example")


async def test_a_renamed_provider_account_cannot_become_another_oidc_user(
    service: IdentityService, issuer: Issuer
) -> None:
    """ATTACK: ``preferred_username`` is the user's to edit at most providers. Mallory (another
    provider account, another ``sub``) renames herself ``olga`` once olga has a Stockade user:
    she must not log in as olga (olga's workspaces, keys, secrets)."""
    await service.login_oidc(id_token(issuer), nonce=NONCE)
    with pytest.raises(TokenRejected) as info:
        await service.login_oidc(id_token(issuer, sub="mallory-0001", groups=["devs"]), nonce=NONCE)
    assert info.value.reason == "subject_mismatch"
    assert (await service.get_user("olga")).roles == ("admin",)
    again = await service.login_oidc(id_token(issuer), nonce=NONCE)  # olga herself still can
    assert again.user.name == "olga"


async def test_a_token_without_sub_is_refused(service: IdentityService, issuer: Issuer) -> None:
    with pytest.raises(TokenRejected) as info:
        await service.login_oidc(id_token(issuer, sub=None), nonce=NONCE)
    assert info.value.reason == "no_subject"


async def test_a_user_whose_groups_lose_every_role_loses_their_roles(
    service: IdentityService, issuer: Issuer
) -> None:
    """ATTACK: olga was an admin; the provider drops her from every mapped group. Her next
    login is refused (``require_role``), and the refusal must not leave her Stockade user, and
    the tokens she already holds, with ``admin``."""
    first = await service.login_oidc(id_token(issuer), nonce=NONCE)
    with pytest.raises(TokenRejected) as info:
        await service.login_oidc(id_token(issuer, groups=["everyone"]), nonce=NONCE)
    assert info.value.reason == "no_role"
    assert (await service.get_user("olga")).roles == ()
    assert (await service.verify_token(first.token)).roles == ()


async def test_a_code_flow_token_is_refused_without_its_nonce(
    service: IdentityService, issuer: Issuer
) -> None:
    """ATTACK: an ID token minted for the authorization-code flow (it carries a ``nonce``)
    replayed through the device-code path (``nonce=None``) skips the nonce check."""
    with pytest.raises(TokenRejected) as info:
        await service.login_oidc(id_token(issuer), nonce=None)
    assert info.value.reason == "bad_nonce"
    assert [u.name for u in await service.list_users()] == []


@pytest.mark.parametrize("claim", ["exp", "iat", "nbf"])
async def test_non_finite_time_claims_are_refused(
    service: IdentityService, issuer: Issuer, claim: str
) -> None:
    """ATTACK: JSON parsers here accept ``NaN``/``Infinity``; every comparison with NaN is
    False, so ``exp``/``iat`` of NaN would pass every time check."""
    for value in (float("nan"), float("inf")):
        with pytest.raises(TokenRejected):
            await service.login_oidc(id_token(issuer, **{claim: value}), nonce=NONCE)
    assert [u.name for u in await service.list_users()] == []


@pytest.mark.parametrize("field", ["issuer", "jwks_url"])
def test_the_provider_is_reached_over_https_only(field: str) -> None:
    """ATTACK: keys fetched over plain HTTP from a non-loopback host can be swapped by anyone
    on the path, who then signs ID tokens for any user."""
    values = {"enabled": True, "issuer": "https://idp.example", "client_id": "x"}
    with pytest.raises(ValidationError, match=field):
        OidcSettings(**{**values, field: "http://idp.example/keys"})
    OidcSettings(**{**values, field: "http://127.0.0.1:8080/keys"})  # loopback: tests, sidecars


async def test_an_id_token_logs_in_once(service: IdentityService, issuer: Issuer) -> None:
    """ATTACK: a device-code ID token has no nonce; whoever copies it (a log, a proxy, a shared
    terminal) replays it for another Stockade token within ``max_age``. Each ID token is
    accepted once."""
    token = id_token(issuer, nonce=None)
    await service.login_oidc(token, nonce=None)
    with pytest.raises(TokenRejected) as info:
        await service.login_oidc(token, nonce=None)
    assert info.value.reason == "replayed"
    await service.login_oidc(id_token(issuer, nonce=None), nonce=None)  # a fresh one does


async def test_a_refused_login_does_not_claim_a_disabled_pre_provisioned_user(
    service: IdentityService, issuer: Issuer
) -> None:
    """ATTACK: an administrator pre-provisions ``pat`` for OIDC (group ``oidc``), disabled
    until her start date. Mallory's provider account, renamed ``pat``, tries first: refused,
    and it must not have bound ``pat`` to Mallory's account, so Pat can log in once enabled."""
    await service.add_user("pat", roles=["developer"], groups=["oidc"])
    await service.set_disabled("pat", True)
    with pytest.raises(TokenRejected) as info:
        await service.login_oidc(
            id_token(issuer, sub="mallory-0001", preferred_username="pat"), nonce=NONCE
        )
    assert info.value.reason == "user_disabled"
    await service.set_disabled("pat", False)
    pat = await service.login_oidc(
        id_token(issuer, sub="pat-0002", preferred_username="pat", groups=["devs"]), nonce=NONCE
    )
    assert pat.user.name == "pat"
    with pytest.raises(TokenRejected) as info:
        await service.login_oidc(
            id_token(issuer, sub="mallory-0001", preferred_username="pat"), nonce=NONCE
        )
    assert info.value.reason == "subject_mismatch"


async def test_a_token_authorized_for_another_client_is_refused(
    service: IdentityService, issuer: Issuer
) -> None:
    """ATTACK: ``azp`` names the party the token was issued to; one issued to another client
    of the provider (that lists us in ``aud``) is not ours to accept, one audience or several."""
    with pytest.raises(TokenRejected) as info:
        await service.login_oidc(id_token(issuer, azp="another-client"), nonce=NONCE)
    assert info.value.reason == "bad_audience"
    await service.login_oidc(id_token(issuer, azp=CLIENT_ID), nonce=NONCE)

"""Projected service-account tokens against a real loopback issuer: every rejection, one test each.

The issuer is a real HTTP server (``tls.jwks``) publishing ES256 keys; tokens are minted by the
test exactly as kubelet shapes them (``kubernetes.io`` claim, ``system:serviceaccount:`` sub).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from stockade.core import BackendError, InvalidInput
from stockade.tls import (
    MethodAllowList,
    RejectionStatus,
    ServiceTokenRejected,
    ServiceTokenVerifier,
    load_allow_list,
)
from tls.jwks import Issuer, serve_issuer

OPEN_SESSION = "/stockade.identity.v1.Identity/StartSession"
VERIFY_TOKEN = "/stockade.identity.v1.Identity/VerifyToken"
ALLOW = MethodAllowList(
    {
        OPEN_SESSION: ["stockade-gateway"],
        VERIFY_TOKEN: ["stockade-broker"],
        "/stockade.authz.v1.Authz/*": ["stockade-gateway", "stockade-broker"],
    }
)


class Clock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@pytest.fixture
def issuer() -> Iterator[Issuer]:
    with serve_issuer() as running:
        yield running


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def verifier(issuer: Issuer, clock: Clock) -> AsyncIterator[ServiceTokenVerifier]:
    v = ServiceTokenVerifier(
        issuer=issuer.url,
        audience="stockade-identity",
        namespace="stockade",
        allow=ALLOW,
        jwks_url=issuer.url + "/jwks.json",
        clock=clock,
        leeway=5,
        min_refresh=30,
    )
    yield v
    await v.aclose()


async def _rejected(verifier: ServiceTokenVerifier, token: str | None, method: str) -> str:
    with pytest.raises(ServiceTokenRejected) as caught:
        await verifier.verify(token, method)
    return caught.value.reason


async def test_gateway_may_open_sessions(verifier: ServiceTokenVerifier, issuer: Issuer) -> None:
    caller = await verifier.verify(issuer.token(), OPEN_SESSION)
    assert caller.name == "stockade/stockade-gateway"
    assert caller.pod is not None
    assert caller.pod.startswith("stockade-gateway-")


async def test_broker_may_verify_tokens(verifier: ServiceTokenVerifier, issuer: Issuer) -> None:
    caller = await verifier.verify(issuer.token(service_account="stockade-broker"), VERIFY_TOKEN)
    assert caller.service_account == "stockade-broker"


async def test_service_wildcard(verifier: ServiceTokenVerifier, issuer: Issuer) -> None:
    token = issuer.token(service_account="stockade-broker")
    assert await verifier.verify(token, "/stockade.authz.v1.Authz/Decide")


async def test_audience_list_naming_us(verifier: ServiceTokenVerifier, issuer: Issuer) -> None:
    token = issuer.token(audience=["vault", "stockade-identity"])
    assert await verifier.verify(token, OPEN_SESSION)


async def test_no_token(verifier: ServiceTokenVerifier) -> None:
    assert await _rejected(verifier, None, OPEN_SESSION) == "no-token"
    assert await _rejected(verifier, "", OPEN_SESSION) == "no-token"


async def test_garbage_token(verifier: ServiceTokenVerifier) -> None:
    assert await _rejected(verifier, "not.a.jwt", OPEN_SESSION) == "malformed"


async def test_symmetric_algorithm_refused(verifier: ServiceTokenVerifier, issuer: Issuer) -> None:
    import jwt

    forged = jwt.encode(
        {"iss": issuer.url, "aud": "stockade-identity"},
        "x" * 32,
        algorithm="HS256",
        headers={"kid": issuer.published[0]},
    )
    assert await _rejected(verifier, forged, OPEN_SESSION) == "malformed"


async def test_wrong_audience(verifier: ServiceTokenVerifier, issuer: Issuer) -> None:
    token = issuer.token(audience="stockade-authz")
    with pytest.raises(ServiceTokenRejected) as caught:
        await verifier.verify(token, OPEN_SESSION)
    assert caught.value.reason == "wrong-audience"
    assert caught.value.status is RejectionStatus.UNAUTHENTICATED


async def test_wrong_issuer(verifier: ServiceTokenVerifier, issuer: Issuer) -> None:
    token = issuer.token(issuer="https://kubernetes.default.svc.other")
    assert await _rejected(verifier, token, OPEN_SESSION) == "wrong-issuer"


async def test_wrong_namespace(verifier: ServiceTokenVerifier, issuer: Issuer) -> None:
    token = issuer.token(namespace="default")
    with pytest.raises(ServiceTokenRejected) as caught:
        await verifier.verify(token, OPEN_SESSION)
    assert caught.value.reason == "wrong-namespace"
    assert caught.value.status is RejectionStatus.PERMISSION_DENIED


async def test_wrong_service_account(verifier: ServiceTokenVerifier, issuer: Issuer) -> None:
    token = issuer.token(service_account="workspace-alice")
    with pytest.raises(ServiceTokenRejected) as caught:
        await verifier.verify(token, OPEN_SESSION)
    assert caught.value.reason == "wrong-service"
    assert caught.value.status is RejectionStatus.PERMISSION_DENIED


async def test_method_not_allowed(verifier: ServiceTokenVerifier, issuer: Issuer) -> None:
    gateway = issuer.token()
    assert await _rejected(verifier, gateway, VERIFY_TOKEN) == "method-not-allowed"
    broker = issuer.token(service_account="stockade-broker")
    assert await _rejected(verifier, broker, OPEN_SESSION) == "method-not-allowed"


async def test_unlisted_method(verifier: ServiceTokenVerifier, issuer: Issuer) -> None:
    token = issuer.token()
    assert await _rejected(verifier, token, "/stockade.identity.v1.Identity/AddUser") == (
        "method-not-allowed"
    )


async def test_expired(verifier: ServiceTokenVerifier, issuer: Issuer, clock: Clock) -> None:
    token = issuer.token(lifetime=60)
    assert await verifier.verify(token, OPEN_SESSION)
    clock.offset = 66
    assert await _rejected(verifier, token, OPEN_SESSION) == "expired"


async def test_no_exp(verifier: ServiceTokenVerifier, issuer: Issuer) -> None:
    token = issuer.token(exp=None)
    assert await _rejected(verifier, token, OPEN_SESSION) == "expired"


async def test_not_yet_valid(verifier: ServiceTokenVerifier, issuer: Issuer) -> None:
    token = issuer.token(not_before=time.time() + 120)
    assert await _rejected(verifier, token, OPEN_SESSION) == "not-yet-valid"


async def test_foreign_signed_same_kid(verifier: ServiceTokenVerifier, issuer: Issuer) -> None:
    """An attacker's key under the issuer's kid: the signature check fails."""
    real_kid = issuer.published[0]
    attacker = Issuer(url=issuer.url)
    attacker.add_key()
    attacker.keys[real_kid] = attacker.keys.pop(attacker.published[0])
    attacker.published = [real_kid]
    token = attacker.token()
    assert await _rejected(verifier, token, OPEN_SESSION) == "bad-signature"


async def test_foreign_signed_unknown_kid(verifier: ServiceTokenVerifier, issuer: Issuer) -> None:
    kid = issuer.add_key(publish=False)
    token = issuer.token(kid=kid)
    assert await _rejected(verifier, token, OPEN_SESSION) == "unknown-key"


async def test_claims_not_a_service(verifier: ServiceTokenVerifier, issuer: Issuer) -> None:
    token = issuer.token(**{"kubernetes.io": None})
    assert await _rejected(verifier, token, OPEN_SESSION) == "not-a-service"
    spoofed = issuer.token(sub="system:serviceaccount:stockade:stockade-broker")
    assert await _rejected(verifier, spoofed, OPEN_SESSION) == "not-a-service"


async def test_keys_cached(verifier: ServiceTokenVerifier, issuer: Issuer) -> None:
    for _ in range(5):
        await verifier.verify(issuer.token(), OPEN_SESSION)
    assert issuer.jwks_fetches == 1


async def test_new_kid_refreshes_once_rate_limited(
    verifier: ServiceTokenVerifier, issuer: Issuer, clock: Clock
) -> None:
    await verifier.verify(issuer.token(), OPEN_SESSION)
    clock.offset = 31  # past min_refresh: a new kid triggers exactly one fetch
    new = issuer.add_key()
    assert await verifier.verify(issuer.token(kid=new, now=clock()), OPEN_SESSION)
    assert issuer.jwks_fetches == 2
    # A flood of random kids inside the window fetches nothing more.
    for _ in range(10):
        kid = issuer.add_key(publish=False)
        token = issuer.token(kid=kid, now=clock())
        assert await _rejected(verifier, token, OPEN_SESSION) == "unknown-key"
    assert issuer.jwks_fetches == 2


async def test_discovery(issuer: Issuer) -> None:
    v = ServiceTokenVerifier(
        issuer=issuer.url, audience="stockade-identity", namespace="stockade", allow=ALLOW
    )
    try:
        assert await v.verify(issuer.token(), OPEN_SESSION)
    finally:
        await v.aclose()


async def test_issuer_unreachable_fails_closed() -> None:
    with serve_issuer() as gone:
        url = gone.url
        token = gone.token()
    v = ServiceTokenVerifier(
        issuer=url, audience="stockade-identity", namespace="stockade", allow=ALLOW
    )
    try:
        assert await _rejected(v, token, OPEN_SESSION) == "unknown-key"
        with pytest.raises(BackendError):
            await v.refresh()
    finally:
        await v.aclose()


def test_allow_list_names_methods() -> None:
    with pytest.raises(InvalidInput, match="not a gRPC method name"):
        MethodAllowList({"StartSession": ["stockade-gateway"]})


def test_allow_list_file(tmp_path: Path) -> None:
    path = tmp_path / "service-auth.json"
    path.write_text(
        '{"authz": {"audience": "stockade-authz", '
        '"allow": {"/stockade.authz.v1.Authz/Decide": ["stockade-gateway"]}}}'
    )
    audience, allow = load_allow_list(path, "authz")
    assert audience == "stockade-authz"
    assert allow.allows("/stockade.authz.v1.Authz/Decide", "stockade-gateway")
    assert not allow.allows("/stockade.authz.v1.Authz/Decide", "stockade-broker")
    audience, allow = load_allow_list(path, "audit")  # not named: nobody may call it
    assert audience == "stockade-audit"
    assert allow.accounts == frozenset()


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("not json", "cannot read"),
        ("[]", "JSON object"),
        ('{"authz": {"allow": {}}}', "authz"),
        ('{"authz": {"audience": "a", "allow": {"/x.Y/Z": "gw"}}}', "/x.Y/Z"),
        ('{"authz": {"audience": "a", "allow": {"Decide": ["gw"]}}}', "not a gRPC method"),
    ],
)
def test_allow_list_file_errors(tmp_path: Path, text: str, where: str) -> None:
    path = tmp_path / "service-auth.json"
    path.write_text(text)
    with pytest.raises(InvalidInput, match=where):
        load_allow_list(path, "authz")


def test_method_rule_narrows_service_wildcard() -> None:
    allow = MethodAllowList(
        {"/s.Identity/*": ["gateway", "broker"], "/s.Identity/VerifyToken": ["broker"]}
    )
    assert allow.allows("/s.Identity/GetUser", "gateway")
    assert not allow.allows("/s.Identity/VerifyToken", "gateway")
    assert allow.allows("/s.Identity/VerifyToken", "broker")


async def test_algorithm_must_match_the_key(verifier: ServiceTokenVerifier, issuer: Issuer) -> None:
    """An EC key's kid with an RSA algorithm in the header (algorithm confusion) is refused."""
    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(
        {"iss": issuer.url}, rsa_key, algorithm="RS256", headers={"kid": issuer.published[0]}
    )
    assert await _rejected(verifier, token, OPEN_SESSION) == "malformed"

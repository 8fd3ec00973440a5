"""JWT issue and verification: the full rejection matrix, rotation, JWKS, key files on disk."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import stat
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from stockade.core.errors import ConfigError, TokenRejected
from stockade.identity import KeyRing
from stockade.identity._tokens import MAX_TOKEN_TTL, REJECT_REASONS, thumbprint
from tests.identity.conftest import FakeClock

ISS, AUD = "stockade", "stockade"


def _claims(clock: FakeClock, **overrides: Any) -> dict[str, Any]:
    now = int(clock.now)
    claims: dict[str, Any] = {
        "jti": "j1",
        "sub": "alice",
        "iss": ISS,
        "aud": AUD,
        "iat": now,
        "nbf": now,
        "exp": now + 900,
        "roles": ["dev"],
        "groups": ["team"],
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _segments(token: str) -> list[str]:
    return token.split(".")


def _reject(ring: KeyRing, token: str, reason: str, **kwargs: str) -> None:
    with pytest.raises(TokenRejected) as info:
        ring.decode(token, issuer=kwargs.get("issuer", ISS), audience=kwargs.get("audience", AUD))
    assert info.value.reason == reason
    assert reason in REJECT_REASONS


def test_valid_token_round_trip(keyring: KeyRing, clock: FakeClock) -> None:
    token = keyring.sign(_claims(clock, sid="s-1"))
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "EdDSA", "kid": keyring.active_kid, "typ": "JWT"}
    claims = keyring.decode(token, issuer=ISS, audience=AUD)
    assert (claims.sub, claims.roles, claims.groups, claims.sid) == (
        "alice",
        ("dev",),
        ("team",),
        "s-1",
    )
    assert claims.exp.timestamp() == clock.now + 900
    assert claims.kid == keyring.active_kid


def test_tampered_payload_is_bad_signature(keyring: KeyRing, clock: FakeClock) -> None:
    header, payload, signature = _segments(keyring.sign(_claims(clock)))
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["roles"] = ["admin"]
    forged = ".".join([header, _b64(json.dumps(claims).encode()), signature])
    _reject(keyring, forged, "bad_signature")


def test_tampered_signature_is_bad_signature(keyring: KeyRing, clock: FakeClock) -> None:
    header, payload, signature = _segments(keyring.sign(_claims(clock)))
    flipped = _b64(bytes([base64.urlsafe_b64decode(signature + "==")[0] ^ 1]))[:2]
    _reject(keyring, ".".join([header, payload, flipped + signature[2:]]), "bad_signature")


def test_expired(keyring: KeyRing, clock: FakeClock) -> None:
    token = keyring.sign(_claims(clock))
    clock.advance(899)
    keyring.decode(token, issuer=ISS, audience=AUD)
    clock.advance(1)
    _reject(keyring, token, "expired")


def test_leeway_tolerates_skew(tmp_path: Path, clock: FakeClock) -> None:
    ring = KeyRing(tmp_path / "k", clock=clock, leeway=30)
    token = ring.sign(_claims(clock, nbf=int(clock.now) + 20, iat=int(clock.now) + 20))
    ring.decode(token, issuer=ISS, audience=AUD)
    clock.advance(900 + 29)
    ring.decode(token, issuer=ISS, audience=AUD)
    clock.advance(30)
    _reject(ring, token, "expired")


def test_not_yet_valid(keyring: KeyRing, clock: FakeClock) -> None:
    _reject(keyring, keyring.sign(_claims(clock, nbf=int(clock.now) + 60)), "not_yet_valid")
    _reject(keyring, keyring.sign(_claims(clock, iat=int(clock.now) + 60)), "not_yet_valid")


def test_wrong_audience(keyring: KeyRing, clock: FakeClock) -> None:
    _reject(keyring, keyring.sign(_claims(clock, aud="broker")), "bad_audience")
    _reject(keyring, keyring.sign(_claims(clock)), "bad_audience", audience="broker")


def test_wrong_issuer(keyring: KeyRing, clock: FakeClock) -> None:
    _reject(keyring, keyring.sign(_claims(clock, iss="evil")), "bad_issuer")


def test_alg_none(keyring: KeyRing, clock: FakeClock) -> None:
    header = _b64(json.dumps({"alg": "none", "kid": keyring.active_kid, "typ": "JWT"}).encode())
    payload = _b64(json.dumps(_claims(clock)).encode())
    _reject(keyring, f"{header}.{payload}.", "bad_algorithm")
    _reject(keyring, jwt.encode(_claims(clock), None, algorithm="none"), "bad_algorithm")


def _hs256(keyring: KeyRing, clock: FakeClock, secret: bytes) -> str:
    header = _b64(json.dumps({"alg": "HS256", "kid": keyring.active_kid, "typ": "JWT"}).encode())
    payload = _b64(json.dumps(_claims(clock, roles=["admin"])).encode())
    mac = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64(mac)}"


def test_hs256_signed_with_the_public_key(keyring: KeyRing, clock: FakeClock) -> None:
    """The classic confusion attack: an HMAC keyed with the (public) verification key."""
    jwk = keyring.jwks()["keys"][0]
    raw = base64.urlsafe_b64decode(jwk["x"] + "==")
    pem = (
        serialization.load_pem_private_key(
            (keyring.directory / f"{keyring.active_kid}.pem").read_bytes(), None
        )
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    for secret in (pem, raw, json.dumps(jwk).encode()):
        _reject(keyring, _hs256(keyring, clock, secret), "bad_algorithm")


def test_unknown_kid(keyring: KeyRing, clock: FakeClock, tmp_path: Path) -> None:
    other = KeyRing(tmp_path / "other", clock=clock)
    _reject(keyring, other.sign(_claims(clock)), "unknown_kid")
    header = _b64(json.dumps({"alg": "EdDSA", "typ": "JWT"}).encode())
    _, payload, signature = _segments(keyring.sign(_claims(clock)))
    _reject(keyring, f"{header}.{payload}.{signature}", "unknown_kid")


def test_algorithm_must_be_the_keys(keyring: KeyRing, clock: FakeClock, tmp_path: Path) -> None:
    """An ES256 token naming an EdDSA key's kid is refused before any signature check."""
    es = KeyRing(tmp_path / "es", algorithm="ES256", clock=clock)
    token = jwt.encode(
        _claims(clock),
        serialization.load_pem_private_key(
            (es.directory / f"{es.active_kid}.pem").read_bytes(), None
        ),
        algorithm="ES256",
        headers={"kid": keyring.active_kid},
    )
    _reject(keyring, token, "bad_algorithm")


@pytest.mark.parametrize("missing", ["exp", "iat", "iss", "aud", "sub", "jti"])
def test_missing_required_claim_is_malformed(
    keyring: KeyRing, clock: FakeClock, missing: str
) -> None:
    claims = _claims(clock)
    del claims[missing]
    _reject(keyring, keyring.sign(claims), "malformed")


@pytest.mark.parametrize(
    "token", ["", "abc", "a.b.c", "a.b", "x" * 9000, "eyJhbGciOiJFZERTQSJ9.e30"]
)
def test_garbage_is_malformed(keyring: KeyRing, token: str) -> None:
    _reject(keyring, token, "malformed")


def test_non_integer_times_are_malformed(keyring: KeyRing, clock: FakeClock) -> None:
    _reject(keyring, keyring.sign(_claims(clock, roles="admin")), "malformed")
    _reject(keyring, keyring.sign(_claims(clock, sid=5)), "malformed")


def test_es256_ring(tmp_path: Path, clock: FakeClock) -> None:
    ring = KeyRing(tmp_path / "es", algorithm="ES256", clock=clock)
    token = ring.sign(_claims(clock))
    assert jwt.get_unverified_header(token)["alg"] == "ES256"
    assert ring.decode(token, issuer=ISS, audience=AUD).sub == "alice"
    (jwk,) = ring.jwks()["keys"]
    assert (jwk["kty"], jwk["crv"], jwk["alg"]) == ("EC", "P-256", "ES256")


def test_jwks_is_rfc8037_and_verifies_independently(keyring: KeyRing, clock: FakeClock) -> None:
    token = keyring.sign(_claims(clock))
    (jwk,) = keyring.jwks()["keys"]
    assert set(jwk) == {"kty", "crv", "x", "kid", "alg", "use"}
    assert (jwk["kty"], jwk["crv"], jwk["alg"], jwk["use"]) == ("OKP", "Ed25519", "EdDSA", "sig")
    assert jwk["kid"] == thumbprint(jwk) == keyring.active_kid
    assert "d" not in jwk
    key = jwt.PyJWK(jwk)
    decoded = jwt.decode(
        token,
        key.key,
        algorithms=["EdDSA"],
        audience=AUD,
        options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
    )
    assert decoded["sub"] == "alice"


def test_thumbprint_matches_rfc7638_example() -> None:
    """RFC 8037 appendix A.3: the thumbprint of its Ed25519 example key."""
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
    assert thumbprint(jwk) == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


def test_rotation_keeps_old_tokens_until_they_expire(keyring: KeyRing, clock: FakeClock) -> None:
    old_kid = keyring.active_kid
    old_token = keyring.sign(_claims(clock, exp=int(clock.now) + MAX_TOKEN_TTL))
    new_kid = keyring.rotate()
    assert new_kid != old_kid
    assert keyring.active_kid == new_kid
    assert jwt.get_unverified_header(keyring.sign(_claims(clock)))["kid"] == new_kid
    assert {k["kid"] for k in keyring.jwks()["keys"]} == {old_kid, new_kid}
    clock.advance(MAX_TOKEN_TTL - 1)
    assert keyring.decode(old_token, issuer=ISS, audience=AUD).kid == old_kid
    assert keyring.prune() == ()
    clock.advance(2)
    assert keyring.prune() == (old_kid,)
    assert [k["kid"] for k in keyring.jwks()["keys"]] == [new_kid]
    assert not (keyring.directory / f"{old_kid}.pem").exists()
    _reject(keyring, old_token, "unknown_kid")


def test_key_files_are_private(keyring: KeyRing) -> None:
    assert stat.S_IMODE(keyring.directory.stat().st_mode) == 0o700
    keyring.seal(b"x", context="c")
    for path in keyring.directory.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_readable_key_file_is_refused(tmp_path: Path, clock: FakeClock) -> None:
    ring = KeyRing(tmp_path / "k", clock=clock)
    os.chmod(ring.directory / f"{ring.active_kid}.pem", 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        KeyRing(tmp_path / "k", clock=clock)


def test_rings_sharing_a_directory_see_each_others_rotation(
    tmp_path: Path, clock: FakeClock
) -> None:
    first = KeyRing(tmp_path / "k", clock=clock)
    second = KeyRing(tmp_path / "k", clock=clock)
    assert first.active_kid == second.active_kid
    new_kid = first.rotate()
    token = first.sign(_claims(clock))
    assert second.decode(token, issuer=ISS, audience=AUD).kid == new_kid
    assert second.active_kid == new_kid


def test_changing_the_algorithm_rotates(tmp_path: Path, clock: FakeClock) -> None:
    ed = KeyRing(tmp_path / "k", clock=clock)
    ed_kid, ed_token = ed.active_kid, ed.sign(_claims(clock))
    es = KeyRing(tmp_path / "k", algorithm="ES256", clock=clock)
    assert es.active_kid != ed_kid
    assert jwt.get_unverified_header(es.sign(_claims(clock)))["alg"] == "ES256"
    assert es.decode(ed_token, issuer=ISS, audience=AUD).sub == "alice"


def test_seal_round_trip_is_bound_to_its_context(keyring: KeyRing) -> None:
    sealed = keyring.seal(b"totp secret", context="totp:alice")
    assert b"totp secret" not in sealed.encode()
    assert keyring.unseal(sealed, context="totp:alice") == b"totp secret"
    with pytest.raises(ConfigError, match="cannot be decrypted"):
        keyring.unseal(sealed, context="totp:mallory")


def test_damaged_key_directory_is_a_config_error(tmp_path: Path, clock: FakeClock) -> None:
    ring = KeyRing(tmp_path / "k", clock=clock)
    (ring.directory / f"{ring.active_kid}.pem").unlink()
    with pytest.raises(ConfigError, match="damaged"):
        KeyRing(tmp_path / "k", clock=clock)

"""argon2id passwords and RFC 6238 TOTP (the RFC's own test vectors)."""

from __future__ import annotations

import base64
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from stockade.core.errors import InvalidInput
from stockade.identity import PasswordHasher, totp_code
from stockade.identity._passwords import provisioning_uri, totp_match

RFC6238_SECRET = b"12345678901234567890"
# RFC 6238 Appendix B, SHA1 column: (unix time, 8-digit TOTP).
RFC6238_SHA1 = [
    (59, "94287082"),
    (1111111109, "07081804"),
    (1111111111, "14050471"),
    (1234567890, "89005924"),
    (2000000000, "69279037"),
    (20000000000, "65353130"),
]


@pytest.mark.parametrize(("unix_time", "expected"), RFC6238_SHA1)
def test_rfc6238_vectors(unix_time: int, expected: str) -> None:
    assert totp_code(RFC6238_SECRET, unix_time // 30, digits=8) == expected
    assert totp_code(RFC6238_SECRET, unix_time // 30) == expected[-6:]


@pytest.mark.parametrize(("unix_time", "expected"), RFC6238_SHA1)
def test_match_accepts_the_current_code(unix_time: int, expected: str) -> None:
    assert totp_match(RFC6238_SECRET, expected[-6:], now=unix_time) == unix_time // 30


def test_match_window_is_one_step_each_side() -> None:
    now = 1234567890
    step = now // 30
    for offset, accepted in [(-2, False), (-1, True), (0, True), (1, True), (2, False)]:
        code = totp_code(RFC6238_SECRET, step + offset)
        assert (totp_match(RFC6238_SECRET, code, now=now) == step + offset) is accepted, offset


def test_match_refuses_replay_of_an_accepted_step() -> None:
    now = 1234567890
    code = totp_code(RFC6238_SECRET, now // 30)
    assert totp_match(RFC6238_SECRET, code, now=now, after_step=now // 30) is None
    assert totp_match(RFC6238_SECRET, code, now=now, after_step=now // 30 - 1) == now // 30


@pytest.mark.parametrize("code", ["", "12345", "1234567", "abcdef", "١٢٣٤٥٦", "-12345"])
def test_match_refuses_malformed_codes(code: str) -> None:
    assert totp_match(RFC6238_SECRET, code, now=1234567890) is None


def test_provisioning_uri() -> None:
    enrollment = provisioning_uri(RFC6238_SECRET, account="alice", issuer="stockade")
    parts = urlsplit(enrollment.uri)
    assert parts.scheme == "otpauth"
    assert parts.netloc == "totp"
    assert unquote(parts.path) == "/stockade:alice"
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert query == {
        "secret": enrollment.secret,
        "issuer": "stockade",
        "algorithm": "SHA1",
        "digits": "6",
        "period": "30",
    }
    padded = enrollment.secret + "=" * (-len(enrollment.secret) % 8)
    assert base64.b32decode(padded) == RFC6238_SECRET
    assert enrollment.secret not in repr(enrollment)
    assert "[secure]" in repr(enrollment)


@pytest.fixture(scope="module")
def hasher() -> PasswordHasher:
    return PasswordHasher()


def test_hash_is_argon2id_and_verifies(hasher: PasswordHasher) -> None:
    hashed = hasher.hash("correct horse battery")
    assert hashed.startswith("$argon2id$v=19$m=65536,t=3,p=4$")
    assert hasher.verify(hashed, "correct horse battery")
    assert not hasher.verify(hashed, "correct horse battery!")
    assert not hasher.verify(None, "correct horse battery")
    assert not hasher.verify("not a hash", "correct horse battery")
    assert not hasher.needs_rehash(hashed)


def test_hashes_are_salted(hasher: PasswordHasher) -> None:
    assert hasher.hash("same password") != hasher.hash("same password")


def test_other_parameters_need_rehash(hasher: PasswordHasher) -> None:
    cheap = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)
    assert hasher.needs_rehash(cheap.hash("some password"))
    assert hasher.verify(cheap.hash("some password"), "some password")


@pytest.mark.parametrize(
    ("password", "problem"), [("short", "at least 8"), ("x" * 1025, "at most")]
)
def test_password_length_is_checked(hasher: PasswordHasher, password: str, problem: str) -> None:
    with pytest.raises(InvalidInput, match=problem):
        hasher.hash(password)

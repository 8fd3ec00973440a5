"""Passwords (argon2id) and TOTP codes (RFC 6238: HMAC-SHA1, 30 s steps, 6 digits).

Both are pure functions of their inputs; the service stores the results. Comparisons are
constant-time, and TOTP verification tries every step of the window without stopping early.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import struct
from dataclasses import dataclass, field
from urllib.parse import quote, urlencode

from argon2 import PasswordHasher as _Argon2
from argon2 import Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from stockade.core.errors import InvalidInput
from stockade.core.logging import REDACTED

__all__ = [
    "MAX_PASSWORD",
    "MIN_PASSWORD",
    "TOTP_DIGITS",
    "TOTP_STEP",
    "PasswordHasher",
    "TotpEnrollment",
    "new_totp_secret",
    "provisioning_uri",
    "totp_code",
    "totp_match",
]

MIN_PASSWORD = 8
MAX_PASSWORD = 1024
TOTP_STEP = 30
TOTP_DIGITS = 6


class PasswordHasher:
    """argon2id hashing with argon2-cffi's RFC 9106 "low memory" defaults (t=3, m=64 MiB, p=4).

    The cost arguments exist for tests and small machines; production callers use the defaults.
    """

    def __init__(
        self, *, time_cost: int = 3, memory_cost: int = 65536, parallelism: int = 4
    ) -> None:
        self._hasher = _Argon2(
            time_cost=time_cost,
            memory_cost=memory_cost,
            parallelism=parallelism,
            type=Type.ID,
        )
        self._dummy: str | None = None

    def __repr__(self) -> str:
        params = self._hasher
        return (
            f"PasswordHasher(time_cost={params.time_cost}, memory_cost={params.memory_cost}, "
            f"parallelism={params.parallelism})"
        )

    def hash(self, password: str) -> str:
        """Check ``password``'s length and return its argon2id hash (PHC string)."""
        check_password(password)
        return self._hasher.hash(password)

    def verify(self, hashed: str | None, password: str) -> bool:
        """True when ``password`` matches ``hashed``; with ``hashed=None`` a dummy hash is checked
        so unknown users cost as much as known ones. Never raises for a wrong password."""
        if len(password) > MAX_PASSWORD:
            return False
        if hashed is None:
            if self._dummy is None:
                self._dummy = self._hasher.hash(secrets.token_urlsafe(16))
            hashed, known = self._dummy, False
        else:
            known = True
        try:
            return bool(self._hasher.verify(hashed, password)) and known
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, hashed: str) -> bool:
        """True when ``hashed`` was made with other parameters than this hasher's."""
        try:
            return self._hasher.check_needs_rehash(hashed)
        except InvalidHashError:
            return True


def check_password(password: str) -> None:
    """Raise :class:`InvalidInput` unless ``password`` has an acceptable length."""
    if len(password) < MIN_PASSWORD:
        raise InvalidInput("password", f"must be at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise InvalidInput("password", f"must be at most {MAX_PASSWORD} characters")


@dataclass(frozen=True)
class TotpEnrollment:
    """What a user needs to set up an authenticator app; shown once, never logged."""

    secret: str = field(repr=False)
    """Base32 secret (no padding)."""
    uri: str = field(repr=False)
    """``otpauth://totp/...`` provisioning URI (render it as a QR code)."""

    def __repr__(self) -> str:
        return f"TotpEnrollment(secret={REDACTED!r}, uri={REDACTED!r})"


def new_totp_secret() -> bytes:
    """A fresh 160-bit TOTP secret (RFC 4226 recommends the HMAC-SHA1 output size)."""
    return secrets.token_bytes(20)


def _b32(secret: bytes) -> str:
    return base64.b32encode(secret).decode("ascii").rstrip("=")


def provisioning_uri(secret: bytes, *, account: str, issuer: str) -> TotpEnrollment:
    """The Key Uri Format enrollment for ``account`` at ``issuer``."""
    label = quote(f"{issuer}:{account}", safe=":@")
    query = urlencode(
        {
            "secret": _b32(secret),
            "issuer": issuer,
            "algorithm": "SHA1",
            "digits": TOTP_DIGITS,
            "period": TOTP_STEP,
        }
    )
    return TotpEnrollment(secret=_b32(secret), uri=f"otpauth://totp/{label}?{query}")


def totp_code(secret: bytes, step: int, *, digits: int = TOTP_DIGITS) -> str:
    """The RFC 6238 code for time step ``step`` (``unix_time // 30``), HMAC-SHA1."""
    mac = hmac.new(secret, struct.pack(">Q", step), hashlib.sha1).digest()
    offset = mac[-1] & 0x0F
    value = int.from_bytes(mac[offset : offset + 4], "big") & 0x7FFFFFFF
    return str(value % 10**digits).zfill(digits)


def totp_match(
    secret: bytes, code: str, *, now: float, window: int = 1, after_step: int | None = None
) -> int | None:
    """The time step whose code equals ``code`` within ``±window`` steps of ``now``, else None.

    Steps at or before ``after_step`` (the last one accepted) never match, so a code cannot be
    used twice. Every candidate is compared in constant time.
    """
    code = code.strip().replace(" ", "")
    if len(code) != TOTP_DIGITS or not code.isascii() or not code.isdigit():
        return None
    current = int(now) // TOTP_STEP
    found: int | None = None
    for step in range(current - window, current + window + 1):
        expected = totp_code(secret, step)
        if hmac.compare_digest(expected, code) and (after_step is None or step > after_step):
            found = step
    return found

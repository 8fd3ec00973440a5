"""OpenSSH public keys: parse one ``authorized_keys`` line, check its strength, fingerprint it.

The key blob is parsed field by field from the SSH wire format (RFC 4253, 5656, 8709 and
OpenSSH's PROTOCOL.u2f); points and moduli are then loaded with ``cryptography`` so an invalid
curve point or RSA modulus is refused. Fingerprints match ``ssh-keygen -lf``:
``SHA256:`` + unpadded base64 of the SHA-256 of the blob.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from stockade.core.errors import InvalidInput

__all__ = ["MAX_KEY_LINE", "SUPPORTED_KEY_TYPES", "ParsedKey", "fingerprint", "parse_public_key"]

MAX_KEY_LINE = 16 * 1024
MAX_RSA_BITS = 16384
_MAX_COMMENT = 256

_ECDSA_CURVES: dict[str, tuple[str, ec.EllipticCurve, int]] = {
    "ecdsa-sha2-nistp256": ("nistp256", ec.SECP256R1(), 256),
    "ecdsa-sha2-nistp384": ("nistp384", ec.SECP384R1(), 384),
    "ecdsa-sha2-nistp521": ("nistp521", ec.SECP521R1(), 521),
    "sk-ecdsa-sha2-nistp256@openssh.com": ("nistp256", ec.SECP256R1(), 256),
}
SUPPORTED_KEY_TYPES = frozenset(
    {"ssh-ed25519", "sk-ssh-ed25519@openssh.com", "ssh-rsa", *_ECDSA_CURVES}
)
_REFUSED_TYPES = {
    "ssh-dss": "DSA keys are weak and refused; use ssh-keygen -t ed25519",
}
#: C0, DEL, C1 (U+009D is an 8-bit OSC to a terminal) and line separators: as in user names.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


@dataclass(frozen=True, slots=True)
class ParsedKey:
    """A validated public key. ``public_key`` is the normalized ``type base64`` form."""

    key_type: str
    bits: int
    fingerprint: str
    comment: str
    public_key: str


def fingerprint(blob: bytes) -> str:
    """The ``SHA256:...`` fingerprint of a key blob, exactly as ``ssh-keygen -lf`` prints it."""
    digest = hashlib.sha256(blob).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


class _Reader:
    """Reads SSH wire-format fields; every short read is a malformed key."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def string(self) -> bytes:
        if self._pos + 4 > len(self._data):
            raise _malformed("truncated key data")
        length = int.from_bytes(self._data[self._pos : self._pos + 4], "big")
        start = self._pos + 4
        if start + length > len(self._data):
            raise _malformed("truncated key data")
        self._pos = start + length
        return self._data[start : self._pos]

    def mpint(self) -> int:
        raw = self.string()
        if raw and raw[0] & 0x80:
            raise _malformed("negative integer in RSA key")
        return int.from_bytes(raw, "big")

    def text(self) -> str:
        try:
            return self.string().decode("ascii")
        except UnicodeDecodeError as err:
            raise _malformed("non-ASCII name in key data") from err

    def end(self) -> None:
        if self._pos != len(self._data):
            raise _malformed("trailing bytes after the key")


def _malformed(problem: str) -> InvalidInput:
    return InvalidInput("ssh key", problem)


def parse_public_key(line: str, *, min_rsa_bits: int = 3072) -> ParsedKey:
    """Parse one ``authorized_keys`` line (``type base64 [comment]``) into a :class:`ParsedKey`.

    Raises :class:`InvalidInput` naming the problem for: empty or oversized lines, options
    before the key type (``from=...``: not honoured, so refused), unknown or weak types (DSA,
    RSA below ``min_rsa_bits``), certificates, a base64 or wire-format error, a type in the
    blob that differs from the line's, an invalid point or modulus, control characters.
    """
    if len(line) > MAX_KEY_LINE:
        raise _malformed(f"line longer than {MAX_KEY_LINE} characters")
    line = line.strip()
    if not line:
        raise _malformed("empty key")
    if "\n" in line or "\r" in line:
        raise _malformed("more than one line; add keys one at a time")
    if _CONTROL.search(line):
        raise _malformed("control characters in key line")
    parts = line.split(None, 2)
    key_type = parts[0]
    if key_type not in SUPPORTED_KEY_TYPES:
        if key_type in _REFUSED_TYPES:
            raise _malformed(_REFUSED_TYPES[key_type])
        if "-cert-v01@openssh.com" in key_type:
            raise _malformed("certificates are not accepted; give the plain public key")
        if len(parts) > 1 and any(t in line for t in SUPPORTED_KEY_TYPES):
            raise _malformed("authorized_keys options are not supported; give 'type base64'")
        raise _malformed(f"unsupported key type {key_type[:64]!r}")
    if len(parts) < 2:
        raise _malformed("missing base64 key data after the type")
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError) as err:
        raise _malformed("key data is not valid base64") from err
    comment = parts[2].strip() if len(parts) > 2 else ""
    if len(comment) > _MAX_COMMENT:
        raise _malformed(f"comment longer than {_MAX_COMMENT} characters")
    bits = _check_blob(key_type, blob, min_rsa_bits=min_rsa_bits)
    encoded = base64.b64encode(blob).decode("ascii")
    return ParsedKey(
        key_type=key_type,
        bits=bits,
        fingerprint=fingerprint(blob),
        comment=comment,
        public_key=f"{key_type} {encoded}",
    )


def _check_blob(key_type: str, blob: bytes, *, min_rsa_bits: int) -> int:
    """Validate ``blob`` as a ``key_type`` key and return its size in bits."""
    reader = _Reader(blob)
    inner = reader.text()
    if inner != key_type:
        raise _malformed(f"key data is of type {inner[:64]!r} but the line says {key_type!r}")
    if key_type in ("ssh-ed25519", "sk-ssh-ed25519@openssh.com"):
        point = reader.string()
        if len(point) != 32:
            raise _malformed("ed25519 public key must be 32 bytes")
        try:
            ed25519.Ed25519PublicKey.from_public_bytes(point)
        except ValueError as err:
            raise _malformed("invalid ed25519 public key") from err
        bits = 256
    elif key_type in _ECDSA_CURVES:
        curve_name, curve, bits = _ECDSA_CURVES[key_type]
        if reader.text() != curve_name:
            raise _malformed(f"curve does not match {key_type}")
        try:
            ec.EllipticCurvePublicKey.from_encoded_point(curve, reader.string())
        except ValueError as err:
            raise _malformed(f"invalid {curve_name} point") from err
    else:  # ssh-rsa
        exponent = reader.mpint()
        modulus = reader.mpint()
        bits = modulus.bit_length()
        if bits < min_rsa_bits:
            raise _malformed(
                f"RSA key of {bits} bits is too weak; at least {min_rsa_bits} bits required "
                "(ssh-keygen -t ed25519 makes a strong, short key)"
            )
        if bits > MAX_RSA_BITS:
            raise _malformed(f"RSA key of {bits} bits exceeds {MAX_RSA_BITS}")
        try:
            rsa.RSAPublicNumbers(exponent, modulus).public_key()
        except ValueError as err:
            raise _malformed("invalid RSA public key") from err
    if key_type.startswith("sk-"):
        reader.string()  # the FIDO application, usually "ssh:"
    reader.end()
    return bits

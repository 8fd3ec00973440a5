"""JWT signing keys on disk (:class:`KeyRing`), issuing, and verification with pinned algorithms.

Layout of the key directory (0700; every file 0600, written atomically)::

    keyring.json     {"active": kid, "keys": {kid: {"alg", "created_at", "retired_at"}}}
    <kid>.pem        PKCS#8 private key; kid = RFC 7638 thumbprint of the public JWK
    sealing.key      32 random bytes: AES-256-GCM key sealing TOTP secrets in the database

Verification never trusts the token's header for the algorithm: the key named by ``kid`` fixes
it, and anything else (``none``, ``HS256``, the other curve) is ``bad_algorithm``. Failures raise
:class:`~stockade.core.errors.TokenRejected` with one of :data:`REJECT_REASONS`.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import jwt
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from jwt.algorithms import ECAlgorithm, OKPAlgorithm

from stockade.core.errors import ConfigError, StoreUnavailable, TokenRejected
from stockade.core.files import write_private

__all__ = ["MAX_TOKEN_BYTES", "MAX_TOKEN_TTL", "REJECT_REASONS", "Algorithm", "Claims", "KeyRing"]

Algorithm = Literal["EdDSA", "ES256"]
#: Upper bound of any token's lifetime; retired keys are kept this long (plus leeway).
MAX_TOKEN_TTL = 86400
MAX_TOKEN_BYTES = 8192
REJECT_REASONS = frozenset(
    {
        "bad_algorithm",
        "bad_audience",
        "bad_issuer",
        "bad_signature",
        "expired",
        "malformed",
        "not_yet_valid",
        "session_ended",
        "unknown_kid",
        "user_disabled",
    }
)
_ALGORITHMS: frozenset[str] = frozenset({"EdDSA", "ES256"})
_REQUIRED = ["exp", "iat", "iss", "aud", "sub", "jti"]
_INDEX = "keyring.json"
_SEALING = "sealing.key"

_PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
_PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey


@dataclass(frozen=True)
class Claims:
    """The verified claims of a token. ``aud`` is the audience it was checked against."""

    jti: str
    sub: str
    iss: str
    aud: str
    iat: datetime
    nbf: datetime | None
    exp: datetime
    roles: tuple[str, ...]
    groups: tuple[str, ...]
    sid: str | None
    kid: str


@dataclass(frozen=True)
class _SigningKey:
    kid: str
    alg: Algorithm
    private: _PrivateKey
    created_at: float
    retired_at: float | None

    @property
    def public(self) -> _PublicKey:
        return self.private.public_key()

    def public_jwk(self) -> dict[str, Any]:
        if isinstance(self.private, ed25519.Ed25519PrivateKey):
            return dict(OKPAlgorithm.to_jwk(self.private.public_key(), as_dict=True))
        return dict(ECAlgorithm.to_jwk(self.private.public_key(), as_dict=True))


def thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url without padding)."""
    members = ("crv", "kty", "x") if jwk["kty"] == "OKP" else ("crv", "kty", "x", "y")
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    digest = hashlib.sha256(canonical.encode()).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


def _new_private_key(alg: Algorithm) -> _PrivateKey:
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    return ec.generate_private_key(ec.SECP256R1())


def _read_private(path: Path) -> bytes:
    """Read a secret file, refusing it when group or others may read it (like ssh does)."""
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"{path} is accessible by others (mode {stat.S_IMODE(mode):o}); run: chmod 600 {path}"
        )
    return path.read_bytes()


class KeyRing:
    """Signing keys for JWTs and the sealing key for TOTP secrets, kept in ``directory``.

    Constructing a ring loads the directory (creating it and a first key when empty) and makes
    a new active key when the configured ``algorithm`` differs from the active key's. Several
    processes may share the directory: writers take a lock file, readers reload when
    ``keyring.json`` changes. ``clock`` (unix seconds) exists for tests.
    """

    def __init__(
        self,
        directory: Path,
        *,
        algorithm: Algorithm = "EdDSA",
        max_ttl: int = MAX_TOKEN_TTL,
        leeway: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if algorithm not in _ALGORITHMS:
            raise ConfigError(f"identity.algorithm: {algorithm!r} is not one of EdDSA, ES256")
        self._dir = Path(directory)
        self._algorithm: Algorithm = algorithm
        self._max_ttl = max_ttl
        self._leeway = leeway
        self._clock = clock
        self._keys: dict[str, _SigningKey] = {}
        self._active = ""
        self._index_stamp: tuple[int, int] | None = None
        self._aead: AESGCM | None = None
        try:
            self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self._dir, 0o700)
            with self._locked():
                self._load()
                if not self._active or self._keys[self._active].alg != algorithm:
                    self._rotate_locked()
                else:
                    self._prune_locked()
        except OSError as err:
            raise StoreUnavailable(f"key directory {self._dir}: {err.strerror or err}") from err

    def __repr__(self) -> str:
        return f"KeyRing({str(self._dir)!r}, active={self._active!r}, keys={len(self._keys)})"

    @property
    def directory(self) -> Path:
        return self._dir

    @property
    def active_kid(self) -> str:
        """The kid new tokens are signed with."""
        self._refresh()
        return self._active

    @property
    def max_ttl(self) -> int:
        """The longest lifetime a token signed by this ring may have."""
        return self._max_ttl

    @property
    def kids(self) -> tuple[str, ...]:
        """Every kid that still verifies (active and retired-but-not-pruned), oldest first."""
        self._refresh()
        return tuple(sorted(self._keys, key=lambda kid: self._keys[kid].created_at))

    def now(self) -> float:
        """The ring's clock, unix seconds."""
        return self._clock()

    def rotate(self) -> str:
        """Make a new active key and retire the old one; return the new kid.

        A retired key keeps verifying until every token it could have signed has expired
        (``retired_at + max_ttl + leeway``), and is pruned after that.
        """
        with self._locked():
            self._load()
            return self._rotate_locked()

    def prune(self) -> tuple[str, ...]:
        """Delete retired keys whose tokens have all expired; return their kids."""
        with self._locked():
            self._load()
            return self._prune_locked()

    def jwks(self) -> dict[str, Any]:
        """The public JWK Set (RFC 7517; OKP keys per RFC 8037) of every key that verifies."""
        keys = []
        for kid in self.kids:
            key = self._keys[kid]
            jwk = key.public_jwk()
            jwk.update({"kid": kid, "alg": key.alg, "use": "sig"})
            keys.append(jwk)
        return {"keys": keys}

    def sign(self, claims: dict[str, Any]) -> str:
        """Sign ``claims`` with the active key (header: ``alg``, ``kid``, ``typ: JWT``)."""
        self._refresh()
        key = self._keys[self._active]
        return jwt.encode(claims, key.private, algorithm=key.alg, headers={"kid": key.kid})

    def decode(self, token: str, *, issuer: str, audience: str) -> Claims:
        """Verify ``token``'s signature and registered claims; raise TokenRejected otherwise.

        Checks, in order: size and shape, ``alg`` allowed, ``kid`` known, ``alg`` equal to the
        key's, signature, required claims (exp iat iss aud sub jti), ``iss``, ``aud``, then
        ``exp``/``nbf``/``iat`` against the ring's clock with ``leeway``.
        """
        if not isinstance(token, str) or len(token) > MAX_TOKEN_BYTES:
            raise TokenRejected("malformed", "not a token or too long")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError as err:
            raise TokenRejected("malformed", "unreadable header") from err
        alg = header.get("alg")
        if alg not in _ALGORITHMS:
            raise TokenRejected("bad_algorithm", f"{str(alg)[:16]!r} is not accepted")
        kid = header.get("kid")
        key = self._key(kid) if isinstance(kid, str) else None
        if key is None:
            raise TokenRejected("unknown_kid")
        if alg != key.alg:
            raise TokenRejected("bad_algorithm", f"key {kid} signs with {key.alg}")
        try:
            payload: dict[str, Any] = jwt.decode(
                token,
                key.public,
                algorithms=[key.alg],
                audience=audience,
                issuer=issuer,
                options={
                    "require": _REQUIRED,
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.InvalidSignatureError as err:
            raise TokenRejected("bad_signature") from err
        except jwt.InvalidAlgorithmError as err:
            raise TokenRejected("bad_algorithm") from err
        except jwt.InvalidAudienceError as err:
            raise TokenRejected("bad_audience") from err
        except jwt.InvalidIssuerError as err:
            raise TokenRejected("bad_issuer") from err
        except jwt.MissingRequiredClaimError as err:
            raise TokenRejected("malformed", f"missing claim {err.claim}") from err
        except jwt.InvalidTokenError as err:
            raise TokenRejected("malformed", type(err).__name__) from err
        return self._check_times(payload, audience=audience, kid=key.kid)

    def _check_times(self, payload: dict[str, Any], *, audience: str, kid: str) -> Claims:
        times: dict[str, int] = {}
        for name in ("exp", "iat", "nbf"):
            value = payload.get(name)
            if value is None and name == "nbf":
                continue
            if not isinstance(value, int) or isinstance(value, bool):
                raise TokenRejected("malformed", f"{name} is not an integer")
            times[name] = value
        now = self._clock()
        if now >= times["exp"] + self._leeway:
            raise TokenRejected("expired")
        if times.get("nbf", 0) > now + self._leeway or times["iat"] > now + self._leeway:
            raise TokenRejected("not_yet_valid")
        roles, groups, sid = payload.get("roles", []), payload.get("groups", []), payload.get("sid")
        if not _str_list(roles) or not _str_list(groups):
            raise TokenRejected("malformed", "roles and groups must be lists of strings")
        if sid is not None and not isinstance(sid, str):
            raise TokenRejected("malformed", "sid is not a string")
        return Claims(
            jti=str(payload["jti"]),
            sub=str(payload["sub"]),
            iss=str(payload["iss"]),
            aud=audience,
            iat=datetime.fromtimestamp(times["iat"], UTC),
            nbf=datetime.fromtimestamp(times["nbf"], UTC) if "nbf" in times else None,
            exp=datetime.fromtimestamp(times["exp"], UTC),
            roles=tuple(roles),
            groups=tuple(groups),
            sid=sid,
            kid=kid,
        )

    def seal(self, plaintext: bytes, *, context: str) -> str:
        """Encrypt ``plaintext`` (AES-256-GCM) bound to ``context`` (e.g. the user name)."""
        nonce = secrets.token_bytes(12)
        sealed = self._sealer().encrypt(nonce, plaintext, context.encode())
        return "v1:" + base64.urlsafe_b64encode(nonce + sealed).decode("ascii")

    def unseal(self, sealed: str, *, context: str) -> bytes:
        """Decrypt what :meth:`seal` made for the same ``context``; ConfigError if it fails
        (the sealing key was replaced or the value was moved to another user)."""
        try:
            version, _, data = sealed.partition(":")
            raw = base64.urlsafe_b64decode(data)
            if version != "v1" or len(raw) < 28:
                raise ValueError(version)
            return self._sealer().decrypt(raw[:12], raw[12:], context.encode())
        except (ValueError, InvalidTag) as err:
            raise ConfigError(
                f"a sealed secret of {context!r} cannot be decrypted with "
                f"{self._dir / _SEALING}; re-enroll it"
            ) from err

    # -- internals ---------------------------------------------------------------------------

    def _key(self, kid: str) -> _SigningKey | None:
        key = self._keys.get(kid)
        if key is None and self._refresh():
            key = self._keys.get(kid)
        if key is not None and key.retired_at is not None and self._expired(key.retired_at):
            return None
        return key

    def _expired(self, retired_at: float) -> bool:
        return self._clock() > retired_at + self._max_ttl + self._leeway

    def _sealer(self) -> AESGCM:
        if self._aead is None:
            path = self._dir / _SEALING
            with self._locked():
                if not path.exists():
                    write_private(path, AESGCM.generate_key(bit_length=256))
            key = _read_private(path)
            if len(key) != 32:
                raise ConfigError(f"{path} must hold 32 bytes")
            self._aead = AESGCM(key)
        return self._aead

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self._dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _stamp(self) -> tuple[int, int] | None:
        try:
            info = (self._dir / _INDEX).stat()
        except FileNotFoundError:
            return None
        return (info.st_mtime_ns, info.st_ino)

    def _refresh(self) -> bool:
        """Reload when another process changed the index; True if anything was reloaded."""
        if self._stamp() == self._index_stamp:
            return False
        with self._locked():
            self._load()
        return True

    def _load(self) -> None:
        path = self._dir / _INDEX
        stamp = self._stamp()
        if stamp is None:
            self._keys, self._active, self._index_stamp = {}, "", None
            return
        try:
            index = json.loads(_read_private(path))
            keys: dict[str, _SigningKey] = {}
            for kid, meta in index["keys"].items():
                pem = _read_private(self._dir / f"{kid}.pem")
                private = serialization.load_pem_private_key(pem, password=None)
                if not isinstance(private, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
                    raise ValueError(f"{kid}.pem is not an Ed25519 or P-256 key")
                keys[kid] = _SigningKey(
                    kid=kid,
                    alg=meta["alg"],
                    private=private,
                    created_at=float(meta["created_at"]),
                    retired_at=None if meta["retired_at"] is None else float(meta["retired_at"]),
                )
            active = str(index["active"])
            if active not in keys:
                raise ValueError(f"active key {active} missing")
        except (ValueError, KeyError, TypeError, FileNotFoundError) as err:
            raise ConfigError(f"key directory {self._dir} is damaged: {err}") from err
        self._keys, self._active, self._index_stamp = keys, active, stamp

    def _save(self) -> None:
        index = {
            "active": self._active,
            "keys": {
                kid: {"alg": k.alg, "created_at": k.created_at, "retired_at": k.retired_at}
                for kid, k in self._keys.items()
            },
        }
        write_private(self._dir / _INDEX, json.dumps(index, indent=2).encode())
        self._index_stamp = self._stamp()

    def _rotate_locked(self) -> str:
        now = self._clock()
        private = _new_private_key(self._algorithm)
        signing = _SigningKey(
            kid="", alg=self._algorithm, private=private, created_at=now, retired_at=None
        )
        kid = thumbprint(signing.public_jwk())
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        write_private(self._dir / f"{kid}.pem", pem)
        if self._active:
            old = self._keys[self._active]
            self._keys[old.kid] = _SigningKey(
                kid=old.kid,
                alg=old.alg,
                private=old.private,
                created_at=old.created_at,
                retired_at=now,
            )
        self._keys[kid] = _SigningKey(
            kid=kid, alg=self._algorithm, private=private, created_at=now, retired_at=None
        )
        self._active = kid
        gone = self._drop_expired()
        self._save()
        self._unlink(gone)
        return kid

    def _prune_locked(self) -> tuple[str, ...]:
        gone = self._drop_expired()
        if gone:
            self._save()
            self._unlink(gone)
        return gone

    def _drop_expired(self) -> tuple[str, ...]:
        gone = tuple(
            kid
            for kid, key in self._keys.items()
            if key.retired_at is not None and self._expired(key.retired_at)
        )
        for kid in gone:
            del self._keys[kid]
        return gone

    def _unlink(self, kids: tuple[str, ...]) -> None:
        """Delete the key files of ``kids``; only after the index no longer names them."""
        for kid in kids:
            with contextlib.suppress(FileNotFoundError):
                (self._dir / f"{kid}.pem").unlink()


def _str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)

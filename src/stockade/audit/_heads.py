"""Signed chain heads: witnesses of the chain kept outside the store.

Every ``head_every_rows`` rows or ``head_every_seconds`` seconds the writer signs the newest
chain hash with an Ed25519 key kept in the data dir's key ring (0600), appends the head to an
append-only file (one JSON line, fsynced) and publishes it on the bus (``stockade.audithead``).
A head also lists the first 16 bytes of the content digest of each row it covers, so that a row
rewritten *with every later hash recomputed* is still located exactly by ``audit verify``.

The signed message is the canonical JSON of ``{"at", "chain_hash", "digests", "first",
"key_id", "last", "v"}`` (``at`` as ISO 8601 UTC with microseconds).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from stockade.core.errors import ConfigError, InvalidInput
from stockade.core.events import AuditHead
from stockade.core.files import write_private
from stockade.core.logging import get_logger

from ._schema import canonical_json, iso
from ._writer import AppendedRow

__all__ = [
    "DIGEST_BYTES",
    "HeadKey",
    "HeadSigner",
    "head_digests",
    "head_message",
    "last_head",
    "load_public_key",
    "public_path",
    "read_heads",
    "verify_head",
]

_log = get_logger("stockade.audit")
#: Bytes of each row's content digest listed in a head.
DIGEST_BYTES = 16


def head_message(head: AuditHead) -> bytes:
    """What the signature of ``head`` covers."""
    return canonical_json(
        {
            "at": iso(head.at),
            "chain_hash": head.chain_hash,
            "digests": head.digests,
            "first": head.first,
            "key_id": head.key_id,
            "last": head.last,
            "v": head.v,
        }
    ).encode()


class HeadKey:
    """The Ed25519 key signing heads: private key PEM (0600) at ``path``, raw public key hex at
    ``path`` + ``.pub``."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        raw = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.key_id = hashlib.sha256(raw).hexdigest()
        self.public_hex = raw.hex()

    def __repr__(self) -> str:
        return f"HeadKey(key_id={self.key_id!r})"

    @classmethod
    def load_or_create(cls, path: Path) -> HeadKey:
        """Load the key at ``path``, creating it (and its ``.pub``) when missing."""
        if path.exists():
            if path.stat().st_mode & 0o077:
                raise ConfigError(f"audit key {path} is readable by others; chmod 600 it")
            try:
                loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
            except (ValueError, TypeError, OSError) as exc:
                raise ConfigError(f"audit key {path}: not a PEM Ed25519 private key") from exc
            if not isinstance(loaded, Ed25519PrivateKey):
                raise ConfigError(f"audit key {path}: not an Ed25519 key")
            key = cls(loaded)
        else:
            key = cls(Ed25519PrivateKey.generate())
            pem = key._private.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            write_private(path, pem)
        pub = public_path(path)
        if not pub.exists() or pub.read_text().strip() != key.public_hex:
            write_private(pub, (key.public_hex + "\n").encode(), mode=0o644)
        return key

    def sign(self, head: AuditHead) -> AuditHead:
        """``head`` with this key's id and signature."""
        unsigned = head.model_copy(update={"key_id": self.key_id, "signature": ""})
        signature = self._private.sign(head_message(unsigned))
        return unsigned.model_copy(update={"signature": base64.b64encode(signature).decode()})


def public_path(key_path: Path) -> Path:
    """Where the public half of the key at ``key_path`` is kept."""
    return key_path.with_name(key_path.name + ".pub")


def load_public_key(key_path: Path) -> Ed25519PublicKey:
    """The verification key: ``.pub`` beside the key file (raw hex)."""
    pub = public_path(key_path)
    try:
        raw = bytes.fromhex(pub.read_text().strip())
        return Ed25519PublicKey.from_public_bytes(raw)
    except FileNotFoundError as exc:
        raise InvalidInput(
            str(pub), "audit public key not found (has the audit service run?)"
        ) from exc
    except (ValueError, OSError) as exc:
        raise InvalidInput(str(pub), "not a raw Ed25519 public key in hex") from exc


def verify_head(head: AuditHead, public: Ed25519PublicKey) -> bool:
    """Whether ``head`` carries a valid signature of ``public`` (and names that key)."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    if head.key_id != hashlib.sha256(raw).hexdigest():
        return False
    try:
        signature = base64.b64decode(head.signature, validate=True)
        public.verify(signature, head_message(head))
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


def head_digests(head: AuditHead) -> list[bytes]:
    """The per-row digest prefixes of ``head``; InvalidInput when they do not fit its range."""
    try:
        raw = base64.b64decode(head.digests, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"head {head.first}..{head.last}", "digests are not base64") from exc
    count = head.last - head.first + 1
    if len(raw) != count * DIGEST_BYTES:
        raise InvalidInput(f"head {head.first}..{head.last}", "digests do not match its rows")
    return [raw[i : i + DIGEST_BYTES] for i in range(0, len(raw), DIGEST_BYTES)]


def read_heads(path: Path) -> Iterator[tuple[int, AuditHead]]:
    """``(line number, head)`` of each head in the file; a torn last line (no newline, from a
    crash while appending) is skipped; any other unreadable line raises InvalidInput."""
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return
    with handle:
        lines = handle.read().split(b"\n")
    torn = lines.pop()  # after the last newline: empty, or a line cut short
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield number, AuditHead.model_validate_json(line)
        except ValueError as exc:
            raise InvalidInput(f"{path}:{number}", "not a signed audit head") from exc
    if torn.strip():
        _log.warning("audit_heads_torn_line", file=str(path), line=len(lines) + 1)


class HeadSigner:
    """Collects written rows and signs heads over them when due (see the module docstring)."""

    def __init__(
        self,
        key: HeadKey,
        path: Path,
        *,
        publish: Callable[[AuditHead], Awaitable[object]] | None,
        every_rows: int,
        every_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.key = key
        self.path = path
        self._publish = publish
        self._every_rows = every_rows
        self._every_seconds = every_seconds
        self._clock = clock
        self._pending: list[AppendedRow] = []
        self._since: float | None = None
        self.heads_signed = 0

    @property
    def pending(self) -> int:
        """Rows written and not yet covered by a signed head."""
        return len(self._pending)

    def add(self, rows: Sequence[AppendedRow]) -> None:
        if rows and not self._pending:
            self._since = self._clock()
        self._pending.extend(rows)

    def due(self) -> bool:
        if not self._pending:
            return False
        if len(self._pending) >= self._every_rows:
            return True
        return self._since is not None and self._clock() - self._since >= self._every_seconds

    async def sign(self) -> list[AuditHead]:
        """Sign heads over every pending row (several when more than ``every_rows``)."""
        heads: list[AuditHead] = []
        while self._pending:
            chunk = self._pending[: self._every_rows]
            digests = b"".join(bytes.fromhex(r.digest)[:DIGEST_BYTES] for r in chunk)
            head = self.key.sign(
                AuditHead(
                    first=chunk[0].id,
                    last=chunk[-1].id,
                    chain_hash=chunk[-1].hash,
                    digests=base64.b64encode(digests).decode(),
                    key_id=self.key.key_id,
                    signature="",
                )
            )
            self._append(head)
            del self._pending[: len(chunk)]
            self.heads_signed += 1
            heads.append(head)
            if self._publish is not None:
                try:
                    await self._publish(head)
                except Exception as exc:  # the file has it; the bus copy is a second witness
                    _log.warning("audit_head_publish_failed", error=str(exc) or type(exc).__name__)
        self._since = self._clock() if self._pending else None
        return heads

    def _append(self, head: AuditHead) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, head.to_bytes() + b"\n")
            os.fsync(fd)
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)


def last_head(path: Path) -> AuditHead | None:
    """The newest head in the file, or None."""
    newest: AuditHead | None = None
    for _number, head in read_heads(path):
        newest = head
    return newest

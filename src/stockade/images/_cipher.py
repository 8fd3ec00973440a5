"""ocicrypt's layer cipher, streamed: AES-256-CTR, then HMAC-SHA256 over the ciphertext.

The symmetric key is 32 random bytes used both for AES-256-CTR (16-byte random nonce as the
initial counter block) and as the HMAC-SHA256 key; the HMAC covers the ciphertext. The options
are JSON as ocicrypt marshals them (byte strings in standard base64)::

    public  (annotation org.opencontainers.image.enc.pubopts, base64 of):
        {"cipher": "AES_256_CTR_HMAC_SHA256", "hmac": B64, "cipheroptions": {}}
    private (the plaintext the key wrappers protect):
        {"symkey": B64, "digest": "sha256:...", "cipheroptions": {"nonce": B64}}

``digest`` is the digest of the unencrypted layer blob. Data moves in fixed-size chunks through
bounded queues between a reader, a cipher and a writer thread, so memory stays flat whatever the
layer's size. Decryption checks the ciphertext's digest and size against its descriptor, the
HMAC, and the plaintext's digest against the private options; the output is usable only when
:func:`decrypt_stream` returns.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import io
import json
import os
import queue
import threading
from dataclasses import dataclass, field
from typing import IO, Any

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from stockade.core.errors import InvalidInput

from ._errors import IntegrityError

__all__ = [
    "CHUNK",
    "CIPHER",
    "PrivateOptions",
    "PublicOptions",
    "StreamResult",
    "decrypt_stream",
    "encrypt_stream",
]

CIPHER = "AES_256_CTR_HMAC_SHA256"
CHUNK = 1 << 20


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(value: object, where: str, name: str) -> bytes:
    if not isinstance(value, str):
        raise InvalidInput(where, f"{name} is not a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(where, f"{name} is not valid base64") from None


@dataclass(frozen=True, slots=True)
class PublicOptions:
    """The public cipher options (annotation ``org.opencontainers.image.enc.pubopts``)."""

    hmac: bytes
    cipher: str = CIPHER

    def to_json(self) -> bytes:
        """ocicrypt's JSON, field order included."""
        return json.dumps(
            {"cipher": self.cipher, "hmac": _b64(self.hmac), "cipheroptions": {}},
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes, where: str) -> PublicOptions:
        """Parse and check the public options of one layer."""
        doc = _load(raw, where, "public options")
        cipher = doc.get("cipher")
        if cipher != CIPHER:
            raise InvalidInput(where, f"unsupported layer cipher {cipher!r}; expected {CIPHER}")
        mac = _unb64(doc.get("hmac"), where, "hmac")
        if len(mac) != 32:
            raise InvalidInput(where, "hmac is not 32 bytes")
        return cls(hmac=mac)


@dataclass(frozen=True, slots=True)
class PrivateOptions:
    """The private cipher options: what every recipient's wrapped key unwraps to."""

    symkey: bytes = field(repr=False)
    nonce: bytes
    digest: str

    def to_json(self) -> bytes:
        """ocicrypt's JSON, field order included."""
        return json.dumps(
            {
                "symkey": _b64(self.symkey),
                "digest": self.digest,
                "cipheroptions": {"nonce": _b64(self.nonce)},
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes, where: str) -> PrivateOptions:
        """Parse and check unwrapped private options."""
        doc = _load(raw, where, "private options")
        symkey = _unb64(doc.get("symkey"), where, "symkey")
        options = doc.get("cipheroptions")
        if not isinstance(options, dict):
            raise InvalidInput(where, "private options have no cipheroptions")
        nonce = _unb64(options.get("nonce"), where, "nonce")
        digest = doc.get("digest")
        if len(symkey) != 32:
            raise InvalidInput(where, f"symkey is {len(symkey)} bytes; AES-256 needs 32")
        if len(nonce) != 16:
            raise InvalidInput(where, f"nonce is {len(nonce)} bytes; expected 16")
        if not isinstance(digest, str) or not digest.startswith("sha256:") or len(digest) != 71:
            raise InvalidInput(where, f"private options digest {digest!r} is not a sha256 digest")
        return cls(symkey=symkey, nonce=nonce, digest=digest)


def _load(raw: bytes, where: str, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise InvalidInput(where, f"{what} are not JSON") from None
    if not isinstance(doc, dict):
        raise InvalidInput(where, f"{what} are not a JSON object")
    return doc


@dataclass(frozen=True, slots=True)
class StreamResult:
    """What a pass over one blob produced: the output's digest and size, and the options."""

    digest: str
    size: int
    public: PublicOptions
    private: PrivateOptions


_DEPTH = 4  # chunks in flight per queue: memory stays under (2 * _DEPTH + 3) * CHUNK


def _pump(
    src: io.BufferedIOBase,
    dst: IO[bytes],
    transform: Any,
    before: list[Any],
    middle: tuple[list[Any], list[Any]],
    after: list[Any],
    limit: int,
    where: str,
) -> int:
    """Move ``src`` to ``dst`` through ``transform`` in three threads, returning bytes read.

    A reader thread reads chunks and feeds them to the ``before`` hashes; this thread feeds the
    ``middle[0]`` hashes, transforms, and feeds ``middle[1]`` with the output; a writer thread
    feeds the ``after`` hashes and writes. hashlib and hmac release the GIL on large updates, so
    the hashing of two stages overlaps on two cores. Queues are bounded, so memory is too.
    """
    inbox: queue.Queue[bytes | None] = queue.Queue(_DEPTH)
    outbox: queue.Queue[bytes | None] = queue.Queue(_DEPTH)
    stop = threading.Event()
    errors: list[BaseException] = []
    total = 0

    def reader() -> None:
        nonlocal total
        try:
            while not stop.is_set():
                chunk = src.read(CHUNK)
                if not chunk:
                    break
                total += len(chunk)
                if total > limit:
                    raise InvalidInput(where, f"blob is larger than its descriptor's size {limit}")
                for h in before:
                    h.update(chunk)
                inbox.put(chunk)
        except BaseException as exc:
            errors.append(exc)
        finally:
            inbox.put(None)

    def writer() -> None:
        failed = False
        while (chunk := outbox.get()) is not None:
            if failed:
                continue  # keep draining so the producer never blocks
            try:
                for h in after:
                    h.update(chunk)
                dst.write(chunk)
            except BaseException as exc:
                errors.append(exc)
                stop.set()
                failed = True

    threads = [
        threading.Thread(target=reader, daemon=True),
        threading.Thread(target=writer, daemon=True),
    ]
    for thread in threads:
        thread.start()
    try:
        while (chunk := inbox.get()) is not None:
            if stop.is_set():
                continue
            for h in middle[0]:
                h.update(chunk)
            out = transform.update(chunk)
            for h in middle[1]:
                h.update(out)
            outbox.put(out)
        tail = transform.finalize()
        if tail:  # CTR buffers nothing; stay correct if a mode ever does
            for h in middle[1]:
                h.update(tail)
            outbox.put(tail)
    finally:
        stop.set()  # after a clean end the reader is done already; otherwise it stops now
        while threads[0].is_alive():  # unblock a reader waiting on a full inbox
            with contextlib.suppress(queue.Empty):
                inbox.get(timeout=0.05)
        outbox.put(None)
        for thread in threads:
            thread.join()
    if errors:
        raise errors[0]
    return total


def encrypt_stream(
    src: io.BufferedIOBase, dst: IO[bytes], *, digest: str, size: int, where: str
) -> StreamResult:
    """Encrypt one layer blob from ``src`` into ``dst``.

    The plaintext is checked against its descriptor's ``digest`` and ``size`` on the way through
    (a source that does not match raises :class:`IntegrityError`; the caller discards ``dst``).
    """
    symkey = os.urandom(32)
    nonce = os.urandom(16)
    encryptor = Cipher(algorithms.AES(symkey), modes.CTR(nonce)).encryptor()
    plain_hash = hashlib.sha256()
    mac = hmac.new(symkey, digestmod="sha256")
    out_hash = hashlib.sha256()
    count = _pump(src, dst, encryptor, [plain_hash], ([], [mac]), [out_hash], size, where)
    _check_input(where, digest, size, "sha256:" + plain_hash.hexdigest(), count)
    return StreamResult(
        digest="sha256:" + out_hash.hexdigest(),
        size=count,
        public=PublicOptions(hmac=mac.digest()),
        private=PrivateOptions(symkey=symkey, nonce=nonce, digest=digest),
    )


def decrypt_stream(
    src: io.BufferedIOBase,
    dst: IO[bytes],
    *,
    digest: str,
    size: int,
    public: PublicOptions,
    private: PrivateOptions,
    where: str,
) -> StreamResult:
    """Decrypt one encrypted layer blob from ``src`` into ``dst``, checking everything.

    Order of checks: the ciphertext's size and digest against the descriptor, then the HMAC
    (constant-time), then the plaintext's digest against the private options. Any failure raises
    :class:`IntegrityError` naming ``where``; ``dst`` must then be discarded.
    """
    decryptor = Cipher(algorithms.AES(private.symkey), modes.CTR(private.nonce)).decryptor()
    in_hash = hashlib.sha256()
    mac = hmac.new(private.symkey, digestmod="sha256")
    plain_hash = hashlib.sha256()
    count = _pump(src, dst, decryptor, [in_hash], ([mac], []), [plain_hash], size, where)
    _check_input(where, digest, size, "sha256:" + in_hash.hexdigest(), count)
    if not hmac.compare_digest(mac.digest(), public.hmac):
        raise IntegrityError(f"{where}: HMAC check failed (ciphertext or key options altered)")
    actual = "sha256:" + plain_hash.hexdigest()
    if not hmac.compare_digest(actual, private.digest):
        raise IntegrityError(
            f"{where}: decrypted layer digest {actual} does not match {private.digest}"
            " recorded in the private options"
        )
    return StreamResult(digest=actual, size=count, public=public, private=private)


def _check_input(where: str, digest: str, size: int, actual: str, count: int) -> None:
    if count != size:
        raise InvalidInput(where, f"blob is truncated: {count} bytes, its descriptor says {size}")
    if not hmac.compare_digest(actual, digest):
        raise IntegrityError(f"{where}: blob digest {actual} does not match its descriptor")

"""The streamed layer cipher: ocicrypt's construction, every check, and bounded failure paths."""

from __future__ import annotations

import hashlib
import hmac
import io
import os

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from stockade.core.errors import InvalidInput
from stockade.images import (
    IntegrityError,
    PrivateOptions,
    PublicOptions,
    decrypt_stream,
    encrypt_stream,
)
from stockade.images._cipher import CHUNK


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 17])
def test_matches_aes_ctr_then_hmac(size: int) -> None:
    """Independent recomputation: AES-256-CTR(nonce) and HMAC-SHA256(symkey, ciphertext)."""
    data = os.urandom(size)
    out = io.BytesIO()
    result = encrypt_stream(io.BytesIO(data), out, digest=_digest(data), size=size, where="t")
    key, nonce = result.private.symkey, result.private.nonce
    expected = Cipher(algorithms.AES(key), modes.CTR(nonce)).encryptor().update(data)
    assert out.getvalue() == expected
    assert result.public.hmac == hmac.new(key, expected, "sha256").digest()
    assert result.digest == _digest(expected)
    assert result.private.digest == _digest(data)
    back = io.BytesIO()
    dec = decrypt_stream(
        io.BytesIO(expected), back, digest=result.digest, size=size,
        public=result.public, private=result.private, where="t",
    )  # fmt: skip
    assert back.getvalue() == data
    assert dec.digest == _digest(data)


def test_options_json_round_trip_in_ocicrypt_order() -> None:
    opts = PrivateOptions(symkey=b"k" * 32, nonce=b"n" * 16, digest="sha256:" + "a" * 64)
    raw = opts.to_json()
    assert raw.startswith(b'{"symkey":')
    assert PrivateOptions.from_json(raw, "t") == opts
    pub = PublicOptions(hmac=b"h" * 32)
    assert PublicOptions.from_json(pub.to_json(), "t") == pub
    assert b"symkey" not in repr(opts).encode()  # the key never shows in a repr


@pytest.mark.parametrize(
    "raw",
    [
        b"[]",
        b'{"symkey":"AAAA","digest":"sha256:x","cipheroptions":{"nonce":"AAAA"}}',
        b'{"symkey":"!!","digest":"sha256:' + b"a" * 64 + b'","cipheroptions":{}}',
        b"not json",
    ],
)
def test_bad_private_options(raw: bytes) -> None:
    with pytest.raises(InvalidInput):
        PrivateOptions.from_json(raw, "layer 0")


def test_unknown_cipher_refused() -> None:
    with pytest.raises(InvalidInput, match="unsupported layer cipher"):
        PublicOptions.from_json(b'{"cipher":"AES_128_GCM","hmac":"","cipheroptions":{}}', "l")


def test_input_that_does_not_match_descriptor() -> None:
    data = os.urandom(1000)
    with pytest.raises(IntegrityError, match="does not match its descriptor"):
        encrypt_stream(
            io.BytesIO(data), io.BytesIO(), digest=_digest(b"other"), size=1000, where="l"
        )
    with pytest.raises(InvalidInput, match="truncated"):
        encrypt_stream(io.BytesIO(data), io.BytesIO(), digest=_digest(data), size=1001, where="l")
    with pytest.raises(InvalidInput, match="larger than"):
        encrypt_stream(
            io.BytesIO(data * 5000), io.BytesIO(), digest=_digest(data), size=1000, where="l"
        )


class _FailingSink(io.RawIOBase):
    def __init__(self, after: int) -> None:
        self.left = after

    def writable(self) -> bool:
        return True

    def write(self, b: object) -> int:
        data = memoryview(b)  # type: ignore[arg-type]
        self.left -= len(data)
        if self.left < 0:
            raise OSError(28, "No space left on device")
        return len(data)


def test_writer_failure_propagates_without_hanging() -> None:
    """A full disk mid-layer: the error surfaces (no thread is left blocked on a queue)."""
    data = os.urandom(12 * CHUNK)
    with pytest.raises(OSError, match="No space left"):
        encrypt_stream(io.BytesIO(data), _FailingSink(2 * CHUNK), digest=_digest(data),  # type: ignore[arg-type]
                       size=len(data), where="l")  # fmt: skip


def test_reader_failure_propagates() -> None:
    class Broken(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, b: object) -> int:
            raise OSError(5, "Input/output error")

    with pytest.raises(OSError, match="Input/output"):
        encrypt_stream(
            io.BufferedReader(Broken()), io.BytesIO(), digest=_digest(b""), size=0, where="l"
        )

"""Key parsing and the two key wrappings, including hostile envelopes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from stockade.core.errors import InvalidInput
from stockade.images import load_decryption_keys, parse_recipient
from stockade.images._der import DerError, parse
from stockade.images._keys import (
    describe_jwe,
    describe_pkcs7,
    unwrap_jwe,
    unwrap_pkcs7,
    wrap_jwe,
    wrap_pkcs7,
)
from tests.images.layouts import KeyFiles

SECRET = b'{"symkey":"x"}'


def test_jwe_multi_recipient_each_key_opens(
    rsa_key: KeyFiles, ec_key: KeyFiles, other_key: KeyFiles
) -> None:
    recipients = [parse_recipient(f"jwe:{rsa_key.public}"), parse_recipient(f"jwe:{ec_key.public}")]
    wrapped = wrap_jwe(SECRET, recipients)
    assert len(json.loads(wrapped)["recipients"]) == 2
    for key in (rsa_key, ec_key):
        assert unwrap_jwe(wrapped, load_decryption_keys([str(key.private)]), "t") == SECRET
    assert unwrap_jwe(wrapped, load_decryption_keys([str(other_key.private)]), "t") is None
    algs = [r.algorithm for r in describe_jwe(wrapped, "t")]
    assert algs == ["RSA-OAEP", "ECDH-ES+A256KW"]


def test_pkcs7_round_trip_and_recipient_names(rsa_key: KeyFiles, other_key: KeyFiles) -> None:
    wrapped = wrap_pkcs7(SECRET, [parse_recipient(f"pkcs7:{rsa_key.cert}")])
    assert unwrap_pkcs7(wrapped, load_decryption_keys([str(rsa_key.private)]), "t") == SECRET
    assert unwrap_pkcs7(wrapped, load_decryption_keys([str(other_key.private)]), "t") is None
    (info,) = describe_pkcs7(wrapped, "t")
    assert info.key_id.startswith("CN=rsa1 serial=")


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"\x30",
        b"\x30\x84\xff\xff\xff\xff",
        b"\x30\x03\x02\x01",
        b"\x30\x80\x00\x00",
        b"\x04\x01a\x00",
    ],
)
def test_hostile_der_is_refused(blob: bytes) -> None:
    with pytest.raises(InvalidInput, match="PKCS#7 envelope does not parse"):
        unwrap_pkcs7(blob, [], "layer 3")


def test_der_parser_bounds() -> None:
    with pytest.raises(DerError):
        parse(b"\x04\x05abc")
    assert parse(b"\x04\x03abc")[0].content == b"abc"


@pytest.mark.parametrize(
    "doc",
    [
        b"[]",
        b"{}",
        b'{"ciphertext":"x","recipients":"nope"}',
        b'{"ciphertext":"x","recipients":[]}',
    ],
)
def test_hostile_jwe(doc: bytes, rsa_key: KeyFiles) -> None:
    with pytest.raises(InvalidInput, match="JWE does not parse"):
        unwrap_jwe(doc, load_decryption_keys([str(rsa_key.private)]), "layer 1")


def test_small_rsa_key_refused(tmp_path: Path) -> None:
    key = rsa.generate_private_key(65537, 1024)  # noqa: S505 - the point of the test
    pub = tmp_path / "small.pub"
    pub.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    with pytest.raises(InvalidInput, match="1024 bits"):
        parse_recipient(f"jwe:{pub}")


@pytest.mark.parametrize("spec", ["jwe", "gpg:key.asc", "jwe:", "pkcs11:x"])
def test_bad_recipient_spec(spec: str) -> None:
    with pytest.raises(InvalidInput, match="--encryption-key"):
        parse_recipient(spec)


def test_pkcs7_needs_a_certificate(rsa_key: KeyFiles) -> None:
    with pytest.raises(InvalidInput, match=r"not an X\.509 certificate"):
        parse_recipient(f"pkcs7:{rsa_key.public}")


def test_encrypted_private_key_needs_passphrase(tmp_path: Path) -> None:
    key = rsa.generate_private_key(65537, 2048)
    path = tmp_path / "enc.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw"),
        )
    )
    with pytest.raises(InvalidInput, match="passphrase-env"):
        load_decryption_keys([str(path)])
    with pytest.raises(InvalidInput, match="wrong passphrase"):
        load_decryption_keys([str(path)], b"nope")
    assert len(load_decryption_keys([str(path)], b"pw")) == 1


def test_jwe_annotation_from_skopeo_shape(rsa_key: KeyFiles) -> None:
    """go-jose's general form also carries a top-level encrypted_key; we ignore it."""
    wrapped = json.loads(wrap_jwe(SECRET, [parse_recipient(f"jwe:{rsa_key.public}")] * 2))
    wrapped["encrypted_key"] = wrapped["recipients"][0]["encrypted_key"]
    raw = json.dumps(wrapped).encode()
    assert unwrap_jwe(raw, load_decryption_keys([str(rsa_key.private)]), "t") == SECRET

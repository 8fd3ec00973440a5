"""Recipient and private keys for layer key wrapping, and the two wrappings ocicrypt defines.

``jwe``: the private options JSON is the plaintext of a JWE (general or flattened JSON
serialization, content encryption A256GCM) with one recipient per public key, RSA-OAEP for RSA
keys and ECDH-ES+A256KW for EC keys, as ocicrypt's ``keywrap/jwe`` writes it. We add each
recipient's RFC 7638 thumbprint as ``kid``, which lets ``inspect`` name recipients and lets
decryption try the matching recipient first; ocicrypt ignores it.

``pkcs7``: a PKCS#7 EnvelopedData, one KeyTransRecipientInfo (issuer and serial, rsaEncryption
PKCS#1 v1.5) per X.509 certificate, content encrypted with AES-128-GCM whose parameters are
encoded as ocicrypt's PKCS#7 library encodes them (a primitive-tagged SEQUENCE holding a
``[4]``-tagged nonce and the ICV length), so each side reads the other's.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from jwcrypto import jwe as jose_jwe
from jwcrypto import jwk as jose_jwk
from jwcrypto.common import JWException

from stockade.core.errors import InvalidInput

from . import _der

__all__ = [
    "JWE_ANNOTATION",
    "PKCS7_ANNOTATION",
    "DecryptionKey",
    "Recipient",
    "RecipientInfo",
    "describe_jwe",
    "describe_pkcs7",
    "load_decryption_keys",
    "parse_recipient",
    "unwrap_jwe",
    "unwrap_pkcs7",
    "wrap_jwe",
    "wrap_pkcs7",
]

JWE_ANNOTATION = "org.opencontainers.image.enc.keys.jwe"
PKCS7_ANNOTATION = "org.opencontainers.image.enc.keys.pkcs7"

_OID_ENVELOPED = "1.2.840.113549.1.7.3"
_OID_DATA = "1.2.840.113549.1.7.1"
_OID_RSA = "1.2.840.113549.1.1.1"
_OID_AES128_GCM = "2.16.840.1.101.3.4.1.6"
_OID_AES256_GCM = "2.16.840.1.101.3.4.1.46"
_MAX_KEY_FILE = 1 << 20

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclass(frozen=True, slots=True)
class Recipient:
    """One ``--encryption-key``: ``jwe`` with a public key, or ``pkcs7`` with a certificate."""

    scheme: Literal["jwe", "pkcs7"]
    source: str
    public_key: PublicKey
    certificate: x509.Certificate | None = None


@dataclass(frozen=True, slots=True)
class DecryptionKey:
    """One ``--decryption-key`` file: a private key, and the certificates found beside it."""

    source: str
    private_key: PrivateKey = field(repr=False)
    certificates: tuple[x509.Certificate, ...] = ()

    @property
    def thumbprint(self) -> str:
        """RFC 7638 SHA-256 thumbprint of the public half (the ``kid`` we write)."""
        return _thumbprint(self.private_key.public_key())


@dataclass(frozen=True, slots=True)
class RecipientInfo:
    """What ``inspect`` shows about one recipient of a wrapped layer key."""

    scheme: str
    algorithm: str
    key_id: str

    def as_dict(self) -> dict[str, str]:
        """The JSON form (stable snake_case fields)."""
        return {"scheme": self.scheme, "algorithm": self.algorithm, "key_id": self.key_id}


def _read_key_file(path: Path, what: str) -> bytes:
    try:
        size = path.stat().st_size
        if size > _MAX_KEY_FILE:
            raise InvalidInput(f"{what} {path}", f"file of {size} bytes is too large for a key")
        return path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"{what} {path}", f"cannot read ({exc.strerror})") from None


def _pem_blocks(data: bytes) -> list[tuple[str, bytes]]:
    blocks: list[tuple[str, bytes]] = []
    marker = b"-----BEGIN "
    pos = data.find(marker)
    while pos >= 0:
        label_end = data.find(b"-----", pos + len(marker))
        if label_end < 0:
            break
        label = data[pos + len(marker) : label_end].decode("ascii", "replace")
        end_marker = b"-----END " + label.encode() + b"-----"
        end = data.find(end_marker, label_end)
        if end < 0:
            break
        blocks.append((label, data[pos : end + len(end_marker)] + b"\n"))
        pos = data.find(marker, end)
    return blocks


def _thumbprint(key: PublicKey) -> str:
    pem = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return str(jose_jwk.JWK.from_pem(pem).thumbprint())


def _check_public(key: object, what: str) -> PublicKey:
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise InvalidInput(what, f"RSA key of {key.key_size} bits; use 2048 or more")
        return key
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in {"secp256r1", "secp384r1", "secp521r1"}:
            raise InvalidInput(what, f"EC curve {key.curve.name} is not P-256, P-384 or P-521")
        return key
    raise InvalidInput(what, f"a {type(key).__name__} is the wrong key type; use RSA or EC")


def parse_recipient(spec: str) -> Recipient:
    """Parse ``jwe:PUB.pem`` or ``pkcs7:CERT.pem`` (skopeo's ``--encryption-key`` forms)."""
    scheme, sep, name = spec.partition(":")
    if not sep or scheme not in {"jwe", "pkcs7"} or not name:
        raise InvalidInput(
            "--encryption-key", f"{spec!r}: expected jwe:PUBLIC_KEY.pem or pkcs7:CERTIFICATE.pem"
        )
    what = f"--encryption-key {spec}"
    data = _read_key_file(Path(name), "--encryption-key")
    if scheme == "pkcs7":
        try:
            cert = (
                x509.load_pem_x509_certificate(data)
                if b"-----BEGIN" in data
                else x509.load_der_x509_certificate(data)
            )
        except ValueError:
            raise InvalidInput(what, "not an X.509 certificate (PEM or DER)") from None
        key = _check_public(cert.public_key(), what)
        if not isinstance(key, rsa.RSAPublicKey):
            raise InvalidInput(what, "pkcs7 recipients need an RSA certificate")
        return Recipient("pkcs7", name, key, cert)
    try:
        if b"-----BEGIN CERTIFICATE" in data:
            raw: object = x509.load_pem_x509_certificate(data).public_key()
        elif b"-----BEGIN" in data:
            raw = serialization.load_pem_public_key(data)
        elif data.lstrip().startswith(b"{"):
            raw = serialization.load_pem_public_key(jose_jwk.JWK.from_json(data).export_to_pem())
        else:
            raw = serialization.load_der_public_key(data)
    except (ValueError, UnsupportedAlgorithm, JWException, TypeError):
        raise InvalidInput(what, "not a public key (PEM, DER or JWK)") from None
    return Recipient("jwe", name, _check_public(raw, what))


def load_decryption_keys(specs: list[str], passphrase: bytes | None = None) -> list[DecryptionKey]:
    """Load ``--decryption-key`` files: PEM private keys (PKCS#1, SEC1 or PKCS#8), and
    certificates (in the same file or their own, needed only to pick a pkcs7 recipient)."""
    keys: list[tuple[str, PrivateKey]] = []
    certs: list[x509.Certificate] = []
    for spec in specs:
        what = f"--decryption-key {spec}"
        data = _read_key_file(Path(spec), "--decryption-key")
        blocks = _pem_blocks(data) if b"-----BEGIN" in data else [("DER", data)]
        found = False
        for label, block in blocks:
            if label == "CERTIFICATE":
                try:
                    certs.append(x509.load_pem_x509_certificate(block))
                except ValueError:
                    raise InvalidInput(what, "a CERTIFICATE block does not parse") from None
                found = True
                continue
            if "PRIVATE KEY" not in label and label != "DER":
                if "PUBLIC KEY" in label:
                    raise InvalidInput(what, "a public key cannot decrypt; give the private key")
                continue
            try:
                key: object = (
                    serialization.load_pem_private_key(block, passphrase)
                    if label != "DER"
                    else serialization.load_der_private_key(block, passphrase)
                )
            except TypeError:
                raise InvalidInput(
                    what, "the key is encrypted; set its passphrase with --passphrase-env VAR"
                ) from None
            except (ValueError, UnsupportedAlgorithm):
                raise InvalidInput(what, "not a private key, or a wrong passphrase") from None
            if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
                raise InvalidInput(what, f"a {type(key).__name__} is the wrong key type")
            _check_public(key.public_key(), what)
            keys.append((spec, key))
            found = True
        if not found:
            raise InvalidInput(what, "holds no private key or certificate")
    if not keys:
        raise InvalidInput("--decryption-key", "no private key given")
    return [DecryptionKey(source, key, tuple(certs)) for source, key in keys]


def wrap_jwe(plaintext: bytes, recipients: list[Recipient]) -> bytes:
    """The JWE JSON of ``plaintext`` for every recipient (general form when more than one)."""
    token = jose_jwe.JWE(plaintext, protected=json.dumps({"enc": "A256GCM"}))
    for recipient in recipients:
        pem = recipient.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        key = jose_jwk.JWK.from_pem(pem)
        alg = "RSA-OAEP" if isinstance(recipient.public_key, rsa.RSAPublicKey) else "ECDH-ES+A256KW"
        token.add_recipient(key, header=json.dumps({"alg": alg, "kid": key.thumbprint()}))
    return str(token.serialize(compact=False)).encode()


def _jwe_recipients(document: dict[str, Any]) -> list[dict[str, Any]]:
    if "recipients" in document:
        recipients = document["recipients"]
        if not isinstance(recipients, list) or not recipients:
            raise ValueError("recipients is not a non-empty list")
        return [r for r in recipients if isinstance(r, dict)]
    return [{"header": document.get("header", {}), "encrypted_key": document.get("encrypted_key")}]


def _parse_jwe(raw: bytes, where: str) -> dict[str, Any]:
    try:
        document = json.loads(raw)
        if not isinstance(document, dict) or "ciphertext" not in document:
            raise ValueError("not a JWE JSON object")
        return document
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise InvalidInput(where, "the JWE does not parse") from None


def _protected(document: dict[str, Any]) -> dict[str, Any]:
    try:
        value = document.get("protected", "")
        padded = value + "=" * (-len(value) % 4)
        parsed = json.loads(base64.urlsafe_b64decode(padded)) if value else {}
        return parsed if isinstance(parsed, dict) else {}
    except (ValueError, TypeError, RecursionError):
        return {}


def describe_jwe(raw: bytes, where: str) -> list[RecipientInfo]:
    """The recipients of one JWE: algorithm and key id (thumbprint, or the EC curve/RSA)."""
    document = _parse_jwe(raw, where)
    protected = _protected(document)
    out = []
    try:
        recipients = _jwe_recipients(document)
    except ValueError as exc:
        raise InvalidInput(where, f"the JWE does not parse ({exc})") from None
    for recipient in recipients:
        header = {**protected, **(recipient.get("header") or {})}
        alg = str(header.get("alg", "?"))
        kid = str(header.get("kid", ""))
        out.append(RecipientInfo("jwe", alg, kid))
    return out


def unwrap_jwe(raw: bytes, keys: list[DecryptionKey], where: str) -> bytes | None:
    """The plaintext if one of ``keys`` opens one recipient of the JWE, else ``None``.

    Each recipient is split into a flattened JWE of its own and tried with each key (a key whose
    thumbprint matches a recipient's ``kid`` first), so a multi-recipient JWE never depends on a
    library's handling of several recipients.
    """
    document = _parse_jwe(raw, where)
    try:
        recipients = _jwe_recipients(document)
    except ValueError as exc:
        raise InvalidInput(where, f"the JWE does not parse ({exc})") from None
    shared = {
        k: v for k, v in document.items() if k not in {"recipients", "header", "encrypted_key"}
    }
    for recipient in recipients:
        kid = (recipient.get("header") or {}).get("kid")
        ordered = sorted(keys, key=lambda k: k.thumbprint != kid)
        single = {**shared, "header": recipient.get("header") or {}}
        if recipient.get("encrypted_key") is not None:
            single["encrypted_key"] = recipient["encrypted_key"]
        text = json.dumps(single)
        for key in ordered:
            pem = key.private_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            token = jose_jwe.JWE()
            try:
                token.deserialize(text, jose_jwk.JWK.from_pem(pem))
            except (JWException, ValueError, TypeError, KeyError):
                continue
            return bytes(token.payload)
    return None


def wrap_pkcs7(plaintext: bytes, recipients: list[Recipient]) -> bytes:
    """A PKCS#7 EnvelopedData of ``plaintext`` for each certificate (AES-128-GCM content)."""
    content_key = AESGCM.generate_key(bit_length=128)
    nonce = os.urandom(12)
    sealed = AESGCM(content_key).encrypt(nonce, plaintext, None)
    infos = []
    for recipient in recipients:
        cert = recipient.certificate
        if cert is None or not isinstance(recipient.public_key, rsa.RSAPublicKey):
            raise InvalidInput(
                f"--encryption-key pkcs7:{recipient.source}", "needs an RSA certificate"
            )
        wrapped = recipient.public_key.encrypt(content_key, padding.PKCS1v15())
        infos.append(
            _der.seq(
                _der.integer(0),
                _der.seq(cert.issuer.public_bytes(), _der.integer(cert.serial_number)),
                _der.seq(_der.oid(_OID_RSA)),
                _der.octets(wrapped),
            )
        )
    params = _der.seq(_der.octets(nonce, tag=0x84), _der.integer(16))
    enveloped = _der.seq(
        _der.integer(0),
        _der.seq(*infos, tag=_der.SET),
        _der.seq(
            _der.oid(_OID_DATA),
            _der.seq(_der.oid(_OID_AES128_GCM), _der.encode(0x10, params)),
            _der.seq(_der.octets(sealed), tag=0xA0),
        ),
    )
    return _der.seq(_der.oid(_OID_ENVELOPED), _der.seq(enveloped, tag=0xA0))


@dataclass(frozen=True, slots=True)
class _Envelope:
    recipients: list[tuple[bytes, int, bytes]]  # issuer DER, serial, encrypted key
    algorithm: str
    nonce: bytes
    sealed: bytes


def _parse_pkcs7(raw: bytes, where: str) -> _Envelope:
    try:
        (top,) = _der.parse(raw)
        content_type, wrapper = top.children()
        if _der.parse_oid(content_type.content) != _OID_ENVELOPED or wrapper.tag != 0xA0:
            raise _der.DerError("not a PKCS#7 EnvelopedData")
        (enveloped,) = wrapper.children()
        parts = enveloped.children()
        recipients = []
        for info in parts[1].children():
            fields = info.children()
            issuer, serial = fields[1].children()
            recipients.append(
                (
                    _der.encode(issuer.tag, issuer.content),
                    int.from_bytes(serial.content, "big", signed=True),
                    fields[3].content,
                )
            )
        eci = parts[2].children()
        alg = eci[1].children()
        algorithm = _der.parse_oid(alg[0].content)
        nonce = b""
        if len(alg) > 1:
            # ocicrypt's library tags the GCM parameters SEQUENCE as primitive; accept both.
            inner = _der.parse(alg[1].content)
            if inner and inner[0].tag == _der.SEQUENCE and alg[1].tag == 0x10:
                inner = inner[0].children()
            nonce = inner[0].content
        if len(eci) < 3:
            raise _der.DerError("no encrypted content")
        body = eci[2]
        sealed = (
            b"".join(child.content for child in body.children())
            if body.constructed
            else body.content
        )
        return _Envelope(recipients, algorithm, nonce, sealed)
    except (_der.DerError, ValueError, IndexError):
        raise InvalidInput(where, "the PKCS#7 envelope does not parse") from None


def describe_pkcs7(raw: bytes, where: str) -> list[RecipientInfo]:
    """The recipients of one PKCS#7 envelope: issuer and serial of each certificate."""
    envelope = _parse_pkcs7(raw, where)
    out = []
    for issuer, serial, _ in envelope.recipients:
        try:
            name = _name(issuer)
        except (_der.DerError, ValueError):
            name = "?"
        out.append(RecipientInfo("pkcs7", "rsaEncryption", f"{name} serial={serial:x}"))
    return out


def _name(issuer_der: bytes) -> str:
    # The RFC 4514 form of the attributes, read straight from the DER (no public loader for it).
    parts = []
    for rdn in _der.parse(issuer_der)[0].children():
        for atv in rdn.children():
            oid_tlv, value = atv.children()
            attr = x509.ObjectIdentifier(_der.parse_oid(oid_tlv.content))
            label = {
                x509.NameOID.COMMON_NAME: "CN",
                x509.NameOID.ORGANIZATION_NAME: "O",
                x509.NameOID.ORGANIZATIONAL_UNIT_NAME: "OU",
                x509.NameOID.COUNTRY_NAME: "C",
            }.get(attr, attr.dotted_string)
            parts.append(f"{label}={value.content.decode('utf-8', 'replace')}")
    return ",".join(reversed(parts))


def unwrap_pkcs7(raw: bytes, keys: list[DecryptionKey], where: str) -> bytes | None:
    """The plaintext if one of ``keys`` opens the envelope, else ``None``.

    A recipient whose issuer and serial match a given certificate is tried with that
    certificate's key; without certificates every recipient is tried with every RSA key (the
    GCM tag tells a right key from a wrong one).
    """
    envelope = _parse_pkcs7(raw, where)
    if envelope.algorithm not in {_OID_AES128_GCM, _OID_AES256_GCM} or len(envelope.nonce) != 12:
        raise InvalidInput(where, f"unsupported PKCS#7 content encryption {envelope.algorithm}")
    for issuer, serial, wrapped in envelope.recipients:
        for key in keys:
            if not isinstance(key.private_key, rsa.RSAPrivateKey):
                continue
            if key.certificates and not any(
                c.issuer.public_bytes() == issuer
                and c.serial_number == serial
                and c.public_key() == key.private_key.public_key()
                for c in key.certificates
            ):
                continue
            with contextlib.suppress(ValueError):
                content_key = key.private_key.decrypt(wrapped, padding.PKCS1v15())
                if len(content_key) not in {16, 32}:
                    continue
                try:
                    return AESGCM(content_key).decrypt(envelope.nonce, envelope.sealed, None)
                except InvalidTag:
                    continue
    return None

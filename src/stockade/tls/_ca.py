"""A development certificate authority kept in the data dir.

``stockade up`` creates it on first start: an ECDSA P-256 CA (10 years) and leaf certificates
(90 days, renewed when less than 30 days remain) for the internal gRPC API and the HTTPS broker.
Private keys are written 0600 in a 0700 directory, atomically (temp file, then rename), so a crash
never leaves a half-written key.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from stockade.core import InvalidInput, write_private

__all__ = [
    "GATEWAY_URI_PREFIX",
    "DevCA",
    "IssuedCert",
    "dns_names",
    "gateway_ids",
    "gateway_uri",
]

_CA_LIFETIME = timedelta(days=3650)
_LEAF_LIFETIME = timedelta(days=90)
_RENEW_BEFORE = timedelta(days=30)


@dataclass(frozen=True)
class IssuedCert:
    """Paths of an issued leaf: certificate chain (leaf + CA), key, and the CA bundle."""

    cert: Path
    key: Path
    ca: Path


#: A gateway's certificate names the gateway id it speaks for as the URI SAN
#: ``spiffe://stockade/gateway/<id>``: every gateway shares the common name ``gateway``, so the
#: common name cannot tell identity which gateway's sessions and heartbeats a caller may touch.
GATEWAY_URI_PREFIX = "spiffe://stockade/gateway/"


def gateway_uri(gateway_id: str) -> str:
    """The URI SAN naming ``gateway_id`` (see :data:`GATEWAY_URI_PREFIX`)."""
    if not gateway_id or any(c in gateway_id for c in "/?#% \t\r\n"):
        raise InvalidInput("gateway_id", f"{gateway_id!r} cannot be named in a certificate")
    return GATEWAY_URI_PREFIX + gateway_id


def gateway_ids(cert: x509.Certificate | bytes) -> list[str]:
    """Every gateway id ``cert`` (parsed, or PEM) names: its URI SANs under
    :data:`GATEWAY_URI_PREFIX`, in order. A certificate may name none (not a gateway, or one
    that cannot be parsed) or, wrongly, several: callers decide what that means."""
    try:
        if isinstance(cert, bytes):
            cert = x509.load_pem_x509_certificate(cert)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except (ValueError, x509.ExtensionNotFound):
        return []
    return [
        uri.removeprefix(GATEWAY_URI_PREFIX)
        for uri in san.value.get_values_for_type(x509.UniformResourceIdentifier)
        if uri.startswith(GATEWAY_URI_PREFIX)
    ]


def common_names(cert: x509.Certificate | bytes) -> list[str]:
    """Every common name of ``cert``'s subject (parsed, or PEM), in order: one for a
    certificate our issuers sign, none for one that cannot be parsed or names none, and,
    wrongly, several (gRPC's ``x509_common_name`` shows only one of them): callers decide."""
    try:
        if isinstance(cert, bytes):
            cert = x509.load_pem_x509_certificate(cert)
        found = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    except ValueError:
        return []
    return [
        a.value if isinstance(a.value, str) else a.value.decode(errors="replace") for a in found
    ]


def _san(names: list[str]) -> x509.SubjectAlternativeName:
    """IP addresses, URIs (anything with ``://``) and DNS names, each as its own kind."""
    entries: list[x509.GeneralName] = []
    for name in names:
        if "://" in name:
            entries.append(x509.UniformResourceIdentifier(name))
            continue
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def dns_names(cert: Path) -> list[str]:
    """The DNS subject alternative names of the PEM certificate in ``cert`` ([] when it cannot
    be read or has none)."""
    try:
        parsed = x509.load_pem_x509_certificate(cert.read_bytes())
        san = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except (OSError, ValueError, x509.ExtensionNotFound):
        return []
    return list(san.value.get_values_for_type(x509.DNSName))


class DevCA:
    """The data dir's CA: ``DevCA(directory).ensure()`` then ``issue(name, ...)``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.ca_cert_path = directory / "ca.pem"
        self.ca_key_path = directory / "ca.key"

    def ensure(self) -> None:
        """Create the CA if it does not exist yet."""
        if self.ca_cert_path.exists() and self.ca_key_path.exists():
            return
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Stockade dev CA")])
        now = datetime.now(UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + _CA_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        write_private(self.ca_key_path, _key_pem(key))
        write_private(self.ca_cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)

    def _load(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        cert = x509.load_pem_x509_certificate(self.ca_cert_path.read_bytes())
        key = serialization.load_pem_private_key(self.ca_key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise InvalidInput(str(self.ca_key_path), "the dev CA key must be an EC key")
        return cert, key

    def issue(
        self,
        name: str,
        *,
        sans: list[str] | None = None,
        server: bool = True,
        client: bool = True,
        lifetime: timedelta = _LEAF_LIFETIME,
        force: bool = False,
    ) -> IssuedCert:
        """Issue (or keep, while fresh) ``<name>.pem``/``<name>.key`` signed by the CA."""
        self.ensure()
        cert_path = self.directory / f"{name}.pem"
        key_path = self.directory / f"{name}.key"
        issued = IssuedCert(cert=cert_path, key=key_path, ca=self.ca_cert_path)
        if not force and cert_path.exists() and key_path.exists():
            existing = x509.load_pem_x509_certificate(cert_path.read_bytes())
            if existing.not_valid_after_utc - datetime.now(UTC) > _RENEW_BEFORE:
                return issued
        cert_pem, key_pem = self.mint(
            name, sans=sans, server=server, client=client, lifetime=lifetime
        )
        write_private(key_path, key_pem)
        write_private(cert_path, cert_pem, mode=0o644)
        return issued

    def mint(
        self,
        name: str,
        *,
        sans: list[str] | None = None,
        server: bool = True,
        client: bool = True,
        lifetime: timedelta = _LEAF_LIFETIME,
    ) -> tuple[bytes, bytes]:
        """A fresh leaf (PEM certificate, PEM PKCS#8 key) signed by the CA; nothing written."""
        self.ensure()
        ca_cert, ca_key = self._load()
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        usages = []
        if server:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        if client:
            usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + lifetime)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_san(sans or ["localhost", "127.0.0.1", "::1"]), critical=False)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )

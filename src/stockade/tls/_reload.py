"""Certificate hot reload: files are re-read when they change, without a restart.

:class:`CertificateFiles` remembers the (mtime, size) of a certificate, key and CA bundle and
hands out fresh bytes only when one of them changed, and only when the new pair is consistent
(the key matches the certificate); a half-rotated pair keeps the previous material in use.
gRPC servers use it through :func:`grpc_server_credentials`, whose fetcher gRPC calls before
handshakes.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from stockade.core import get_logger

__all__ = ["CertificateFiles", "TlsMaterial", "grpc_channel_credentials", "grpc_server_credentials"]

log = get_logger("stockade.tls")


@dataclass(frozen=True)
class TlsMaterial:
    cert: bytes
    key: bytes
    ca: bytes


def _stamp(*paths: Path) -> tuple[tuple[int, int], ...]:
    return tuple((p.stat().st_mtime_ns, p.stat().st_size) for p in paths)


def _consistent(material: TlsMaterial) -> bool:
    cert = x509.load_pem_x509_certificate(material.cert)
    key = serialization.load_pem_private_key(material.key, password=None)
    fmt = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    return cert.public_key().public_bytes(enc, fmt) == key.public_key().public_bytes(enc, fmt)


class CertificateFiles:
    """A certificate/key/CA triple on disk, reloaded when the files change."""

    def __init__(self, cert: Path, key: Path, ca: Path) -> None:
        self._paths = (cert, key, ca)
        self._lock = threading.Lock()
        self._stamp = _stamp(*self._paths)
        self._material = self._read()
        self.reloads = 0

    def _read(self) -> TlsMaterial:
        cert, key, ca = (p.read_bytes() for p in self._paths)
        return TlsMaterial(cert=cert, key=key, ca=ca)

    @property
    def material(self) -> TlsMaterial:
        return self._material

    def changed(self) -> TlsMaterial | None:
        """New material if the files changed and are consistent, else None."""
        with self._lock:
            try:
                stamp = _stamp(*self._paths)
                if stamp == self._stamp:
                    return None
                fresh = self._read()
                if not _consistent(fresh):
                    log.warning("tls.reload.inconsistent", cert=str(self._paths[0]))
                    return None
            except (OSError, ValueError) as exc:
                log.warning("tls.reload.failed", cert=str(self._paths[0]), error=str(exc))
                return None
            self._stamp = stamp
            self._material = fresh
            self.reloads += 1
            log.info("tls.reloaded", cert=str(self._paths[0]))
            return fresh


def grpc_server_credentials(files: CertificateFiles) -> grpc.ServerCredentials:
    """mTLS server credentials (client certificates required) that follow file changes."""

    def config(material: TlsMaterial) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(material.key, material.cert)], root_certificates=material.ca
        )

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        fresh = files.changed()
        return None if fresh is None else config(fresh)

    # grpc calls fetch() before handshakes; None means "unchanged" (grpc-stubs types it wrong).
    return grpc.dynamic_ssl_server_credentials(
        config(files.material),
        fetch,  # type: ignore[arg-type]
        require_client_authentication=True,
    )


def grpc_channel_credentials(files: CertificateFiles) -> grpc.ChannelCredentials:
    """mTLS client credentials from the current material."""
    material = files.material
    return grpc.ssl_channel_credentials(
        root_certificates=material.ca, private_key=material.key, certificate_chain=material.cert
    )

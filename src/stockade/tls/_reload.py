"""Certificate hot reload: files are re-read when they change, without a restart.

:class:`CertificateFiles` remembers the (mtime, size) of a certificate, key and CA bundle and
hands out fresh bytes only when one of them changed, and only when the new pair is consistent
(the key matches the certificate); a half-rotated pair keeps the previous material in use.
gRPC servers use it through :func:`grpc_server_credentials`, whose fetcher gRPC calls before
handshakes; Python TLS servers (uvicorn, the broker) through :class:`ReloadingServerContext`.
"""

from __future__ import annotations

import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from stockade.core import get_logger

__all__ = [
    "CertificateFiles",
    "ReloadingServerContext",
    "TlsMaterial",
    "grpc_channel_credentials",
    "grpc_server_credentials",
]

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
    """A certificate/key/CA triple on disk, reloaded when the files change.

    A change that does not load (garbage, a key that does not match the certificate, a missing
    file) keeps the previous material in use; it is logged once per distinct file state (not
    on every handshake) and shown by :attr:`error` until a good set replaces it.
    """

    def __init__(self, cert: Path, key: Path, ca: Path) -> None:
        self._paths = (cert, key, ca)
        self._lock = threading.Lock()
        self._stamp = _stamp(*self._paths)
        self._material = self._read()
        if not _consistent(self._material):
            raise ValueError(f"{cert}: the key {key} does not match the certificate")
        self._bad_stamp: tuple[tuple[int, int], ...] | None = None
        self.error: str | None = None
        self.reloads = 0

    def __repr__(self) -> str:
        return f"<CertificateFiles {self._paths[0]} reloads={self.reloads} error={self.error!r}>"

    @property
    def paths(self) -> tuple[Path, Path, Path]:
        """(certificate, key, CA bundle)."""
        return self._paths

    def _read(self) -> TlsMaterial:
        cert, key, ca = (p.read_bytes() for p in self._paths)
        return TlsMaterial(cert=cert, key=key, ca=ca)

    @property
    def material(self) -> TlsMaterial:
        return self._material

    @property
    def serial(self) -> int:
        """Serial number of the certificate in use."""
        return x509.load_pem_x509_certificate(self._material.cert).serial_number

    def changed(self) -> TlsMaterial | None:
        """New material if the files changed and are consistent, else None."""
        with self._lock:
            stamp, fresh = self._look()
            if fresh is None:
                return None
            self._stamp = stamp
            self._bad_stamp = None
            self._material = fresh
            self.error = None
            self.reloads += 1
            log.info("tls.reloaded", cert=str(self._paths[0]))
            return fresh

    def check(self) -> str | None:
        """Look at the files now and return :attr:`error`: a change that does not load is
        noted (and logged once) without waiting for a handshake; a good one is left for the
        next handshake to take into use (``stockade status`` asks this every few seconds)."""
        with self._lock:
            stamp, fresh = self._look()
            # good files, taken into use at the next handshake; or the very files in use put
            # back after a bad change (``mv cert.bak cert.pem``: same times and sizes)
            if fresh is not None or stamp == self._stamp:
                self.error = None
                self._bad_stamp = None
            return self.error

    def _look(self) -> tuple[tuple[tuple[int, int], ...], TlsMaterial | None]:
        """(stamp, material) of files that changed and load; material None otherwise, a bad
        change rejected (held under the lock)."""
        try:
            stamp = _stamp(*self._paths)
        except OSError as exc:
            self._reject((), f"cannot stat: {exc}")
            return (), None
        if stamp in (self._stamp, self._bad_stamp):
            return stamp, None
        try:
            fresh = self._read()
            x509.load_pem_x509_certificates(fresh.ca)
            if not _consistent(fresh):
                self._reject(stamp, "the key does not match the certificate")
                return stamp, None
        except (OSError, ValueError, TypeError) as exc:
            self._reject(stamp, str(exc).splitlines()[0][:200] if str(exc) else repr(exc))
            return stamp, None
        return stamp, fresh

    def _reject(self, stamp: tuple[tuple[int, int], ...], why: str) -> None:
        if stamp == self._bad_stamp:
            return
        self._bad_stamp = stamp
        self.error = f"{self._paths[0]}: {why}; the previous certificate stays in use"
        log.error("tls.reload.rejected", cert=str(self._paths[0]), error=why)


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


class ReloadingServerContext:
    """A server :class:`ssl.SSLContext` whose certificate and CA follow :class:`CertificateFiles`.

    Hand :attr:`context` to the TLS server (uvicorn's ``Config.ssl``). On every handshake its
    SNI callback (OpenSSL calls it for each ClientHello, with or without SNI) asks the files
    whether they changed and, when they did, switches the connection to a context built from the
    new material; open connections keep theirs. A bad change keeps the previous context (see
    :class:`CertificateFiles`). ``require_client_cert`` asks for certificates from the bundle's CAs.
    """

    def __init__(self, files: CertificateFiles, *, require_client_cert: bool = False) -> None:
        self._files = files
        self._require_client = require_client_cert
        self._current = self._build()
        self.context = self._build()
        self.context.sni_callback = self._on_hello

    def _build(self) -> ssl.SSLContext:
        cert, key, _ = self._files.paths
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(cert, key)
        if self._require_client:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(cadata=self._files.material.ca.decode("ascii"))
        return ctx

    def _on_hello(self, sock: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
        if self._files.changed() is not None:
            try:
                self._current = self._build()
            except (OSError, ssl.SSLError, ValueError) as exc:
                self._files.error = f"{self._files.paths[0]}: {exc}; the previous one stays"
                log.error("tls.reload.rejected", cert=str(self._files.paths[0]), error=str(exc))
        sock.context = self._current

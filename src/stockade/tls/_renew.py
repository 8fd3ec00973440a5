"""Certificates that renew themselves: issued by the dev CA or OpenBao's PKI engine.

:class:`CertificateRenewer` keeps one service's ``tls.crt`` / ``tls.key`` / ``ca.crt`` in a
directory, laid out as kubelet lays out a projected Secret volume: the three names are symlinks
into ``..data``, itself a symlink to a versioned directory; a renewal writes a whole new versioned
directory and swaps ``..data`` with one ``rename``, so a reader sees the old triple or the new one,
never a certificate beside the wrong key. The previous version is kept (the certificate still in
use by open connections and by readers that have not reloaded yet) and removed at the renewal
after.

A certificate is due at two thirds of its lifetime (cert-manager's default ``renewBefore``).
The CA bundle written with it is the union of the issuing CA and every CA the bundle trusted
before, so moving to another issuer (dev CA -> OpenBao PKI) never leaves a peer with a chain its
partner cannot verify; :meth:`CertificateRenewer.trust` adds a CA ahead of a switch and
:meth:`CertificateRenewer.prune` drops the CAs that no longer issue anything here.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import secrets
import shutil
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from stockade.core import InvalidInput, SecretsBackendUnavailable, get_logger, write_private

from ._ca import DevCA

__all__ = [
    "CertificateRenewer",
    "CertificateSource",
    "DevCASource",
    "IssuedMaterial",
    "OpenBaoPKISource",
]

log = get_logger("stockade.tls.renew")

CERT_NAME = "tls.crt"
KEY_NAME = "tls.key"
CA_NAME = "ca.crt"
_DATA = "..data"
#: The largest answer read from OpenBao's issue endpoint.
_MAX_ANSWER = 1 << 20
#: How far in the future an issued certificate may start (clocks of OpenBao and this host).
_SKEW = timedelta(minutes=5)


@dataclass(frozen=True)
class IssuedMaterial:
    """A freshly issued leaf: PEM chain (leaf first), PEM private key, PEM issuing CA(s)."""

    cert: bytes
    key: bytes
    ca: bytes

    def __repr__(self) -> str:
        return f"<IssuedMaterial serial={_leaf(self.cert).serial_number:x} key=[secure]>"


class CertificateSource(Protocol):
    """Issues a leaf certificate for ``common_name`` and ``sans`` valid for ``ttl``."""

    async def issue(
        self, common_name: str, *, sans: Sequence[str], ttl: timedelta
    ) -> IssuedMaterial: ...


class DevCASource:
    """Leaves from the data dir's :class:`DevCA` (server and client usage)."""

    def __init__(self, ca: DevCA) -> None:
        self._ca = ca

    async def issue(
        self, common_name: str, *, sans: Sequence[str], ttl: timedelta
    ) -> IssuedMaterial:
        cert, key = await asyncio.to_thread(
            self._ca.mint, common_name, sans=list(sans), lifetime=ttl
        )
        return IssuedMaterial(cert=cert, key=key, ca=self._ca.ca_cert_path.read_bytes())


class OpenBaoPKISource:
    """Leaves from Vault/OpenBao's PKI engine: ``POST /v1/<mount>/issue/<role>``.

    The path cert-manager's Vault issuer uses. ``token`` returns a Vault token, or an awaitable
    of one (a fixed token, or a fresh login with :func:`vault_jwt_login` before each issue: a
    renewal comes months later, when any earlier login has long expired); it is sent in the
    ``X-Vault-Token`` header only, never in a URL or a log line. The login and the answer
    together take at most ``deadline`` seconds; what the answer holds is checked by
    :class:`CertificateRenewer` before anything is written.
    """

    def __init__(
        self,
        addr: str,
        *,
        role: str,
        token: Callable[[], str | Awaitable[str]],
        mount: str = "pki",
        verify: str | bool = True,
        deadline: float = 30.0,
    ) -> None:
        self._addr = addr.rstrip("/")
        self._role = role
        self._token = token
        self._mount = mount
        self._verify = verify
        self._deadline = deadline

    def __repr__(self) -> str:
        return f"<OpenBaoPKISource {self._addr}/v1/{self._mount}/issue/{self._role}>"

    async def issue(
        self, common_name: str, *, sans: Sequence[str], ttl: timedelta
    ) -> IssuedMaterial:
        uris = [s for s in sans if "://" in s]  # a gateway's id (the role's allowed_uri_sans)
        ips = [s for s in sans if _is_ip(s)]
        names = [s for s in sans if not _is_ip(s) and s not in uris and s != common_name]
        body = {
            "common_name": common_name,
            "alt_names": ",".join(names),
            "ip_sans": ",".join(ips),
            "uri_sans": ",".join(uris),
            "ttl": f"{int(ttl.total_seconds())}s",
            "private_key_format": "pkcs8",
        }
        url = f"{self._addr}/v1/{self._mount}/issue/{self._role}"
        try:
            # the login and the whole answer within the deadline (httpx's timeout is per read:
            # a body that trickles in would hold the renewal forever), at most _MAX_ANSWER bytes
            async with asyncio.timeout(self._deadline):
                token = self._token()
                if not isinstance(token, str):
                    token = await token
                status, raw = await self._post(url, body, token)
        except TimeoutError:
            raise SecretsBackendUnavailable(
                f"PKI issue at {url} took longer than {self._deadline:g}s (deadline)"
            ) from None
        except httpx.HTTPError as exc:
            raise SecretsBackendUnavailable(f"PKI issue at {url} failed: {exc}") from None
        if status != 200:
            shown = raw[:200].decode(errors="replace").strip()
            raise SecretsBackendUnavailable(f"PKI issue at {url} refused: HTTP {status} {shown}")
        try:
            answer = json.loads(raw)
            data = answer.get("data") or {}
            chain = [data["certificate"], *data.get("ca_chain", [])[:-1]]
            cas = data.get("ca_chain") or [data["issuing_ca"]]
            return IssuedMaterial(
                cert=("\n".join(c.strip() for c in chain) + "\n").encode(),
                key=(data["private_key"].strip() + "\n").encode(),
                ca=(cas[-1].strip() + "\n").encode(),
            )
        except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
            raise SecretsBackendUnavailable(
                f"PKI issue at {url}: malformed answer ({type(exc).__name__})"
            ) from None

    async def _post(self, url: str, body: dict[str, str], token: str) -> tuple[int, bytes]:
        """POST ``body``; the status and at most :data:`_MAX_ANSWER` bytes of the answer (a
        larger one is refused unread: a certificate and its key are a few KiB)."""
        async with httpx.AsyncClient(timeout=10.0, verify=self._verify) as http:
            request = http.stream("POST", url, json=body, headers={"X-Vault-Token": token})
            async with request as response:
                raw = bytearray()
                async for chunk in response.aiter_bytes():
                    raw += chunk
                    if len(raw) > _MAX_ANSWER:
                        raise SecretsBackendUnavailable(
                            f"PKI issue at {url}: the answer exceeds {_MAX_ANSWER} bytes"
                        )
                return response.status_code, bytes(raw)


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _leaf(chain: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificates(chain)[0]


def _issued(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    """Whether ``ca`` signed ``cert`` (or is it): by signature, not by name."""
    if cert == ca:
        return True
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _split_bundle(pem: bytes) -> list[bytes]:
    return [
        c.public_bytes(serialization.Encoding.PEM) for c in x509.load_pem_x509_certificates(pem)
    ]


class CertificateRenewer:
    """Keeps ``directory``'s certificate fresh from ``source`` (see the module docstring)."""

    def __init__(
        self,
        source: CertificateSource,
        directory: Path,
        *,
        common_name: str,
        sans: Sequence[str] = ("localhost", "127.0.0.1", "::1"),
        lifetime: timedelta = timedelta(days=90),
        renew_fraction: float = 2 / 3,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if not 0 < renew_fraction < 1:
            raise InvalidInput(
                "renew_fraction", "must be between 0 and 1 (2/3 renews at 60 of 90 days)"
            )
        self.source = source
        self.directory = directory
        self.common_name = common_name
        self.sans = tuple(sans)
        self.lifetime = lifetime
        self.renew_fraction = renew_fraction
        self._clock = clock
        self.renewals = 0
        self.error: str | None = None
        """Why the last renewal failed (the certificate in use stays), else None."""

    @property
    def cert_path(self) -> Path:
        return self.directory / CERT_NAME

    @property
    def key_path(self) -> Path:
        return self.directory / KEY_NAME

    @property
    def ca_path(self) -> Path:
        return self.directory / CA_NAME

    def current(self) -> x509.Certificate | None:
        """The certificate in the directory now, or None when there is none yet."""
        try:
            return _leaf(self.cert_path.read_bytes())
        except (OSError, ValueError, IndexError):
            return None

    def renew_at(self) -> datetime | None:
        """When the current certificate is due (two thirds of its lifetime by default)."""
        cert = self.current()
        if cert is None:
            return None
        start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
        return start + (end - start) * self.renew_fraction

    def due(self) -> bool:
        when = self.renew_at()
        return when is None or self._clock() >= when

    async def ensure(self) -> None:
        """Issue a certificate when there is none, or when the current one is due."""
        if self.due():
            await self.renew()

    async def renew(self, source: CertificateSource | None = None) -> x509.Certificate:
        """Issue now (from ``source`` when given: the new issuer from then on) and swap it in."""
        if source is not None:
            self.source = source
        issued = await self.source.issue(self.common_name, sans=self.sans, ttl=self.lifetime)
        leaf = self._check(issued)
        bundle = self._bundle(issued.ca)
        self._publish(issued.cert, issued.key, bundle)
        self.renewals += 1
        self.error = None
        log.info(
            "tls.renewed",
            name=self.common_name,
            serial=f"{leaf.serial_number:x}",
            not_after=leaf.not_valid_after_utc.isoformat(),
        )
        return leaf

    def _check(self, issued: IssuedMaterial) -> x509.Certificate:
        """The leaf of ``issued`` if it is what was asked for, else SecretsBackendUnavailable
        (nothing is written: the certificate in use stays, on disk too, so a restart still
        finds a consistent pair). A broken or compromised issuer must not swap in a key that
        does not match, a certificate for another name or gateway id, one that its own CA
        bundle does not verify, or one outside its validity."""
        try:
            chain = x509.load_pem_x509_certificates(issued.cert)
            cas = x509.load_pem_x509_certificates(issued.ca)
            key = serialization.load_pem_private_key(issued.key, password=None)
        except (ValueError, TypeError) as exc:
            raise SecretsBackendUnavailable(
                f"{self.source!r}: the issued material does not load ({type(exc).__name__})"
            ) from None
        leaf = chain[0]
        spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        now = self._clock()
        names = [a.value for a in leaf.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
        try:
            san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            san = x509.SubjectAlternativeName([])
        have = {
            *san.get_values_for_type(x509.DNSName),
            *(str(ip) for ip in san.get_values_for_type(x509.IPAddress)),
        }
        uris = set(san.get_values_for_type(x509.UniformResourceIdentifier))
        wanted_uris = {s for s in self.sans if "://" in s}
        problem = None
        if leaf.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
            problem = "the key does not match the certificate"
        elif names != [self.common_name]:
            problem = f"the certificate is for {names!r}, not {self.common_name!r}"
        elif missing := sorted(s for s in self.sans if "://" not in s and s not in have):
            problem = f"the certificate lacks the names {missing!r}"
        elif uris != wanted_uris:
            problem = (
                f"the certificate names the URIs {sorted(uris)!r}, not {sorted(wanted_uris)!r}"
            )
        elif not any(_issued(chain[-1], ca) for ca in cas):
            problem = "no CA of the answer issued the certificate"
        elif not leaf.not_valid_before_utc - _SKEW <= now < leaf.not_valid_after_utc:
            problem = "the certificate is not valid now"
        if problem is not None:
            raise SecretsBackendUnavailable(f"{self.source!r} issued a bad certificate: {problem}")
        return leaf

    def trust(self, ca_pem: bytes) -> None:
        """Add CA certificates to the bundle (ahead of moving any peer to a new issuer)."""
        cert, key = self.cert_path.read_bytes(), self.key_path.read_bytes()
        self._publish(cert, key, self._bundle(ca_pem))

    def prune(self) -> None:
        """Drop from the bundle every CA except the one that issued the current certificate."""
        cert, key = self.cert_path.read_bytes(), self.key_path.read_bytes()
        chain = x509.load_pem_x509_certificates(cert)
        keep = [
            pem
            for pem in _split_bundle(self.ca_path.read_bytes())
            if _issued(chain[-1], x509.load_pem_x509_certificate(pem))
        ]
        if not keep:
            raise InvalidInput(str(self.ca_path), "no CA in the bundle issued the certificate")
        self._publish(cert, key, b"".join(keep))

    def _bundle(self, new_ca: bytes) -> bytes:
        cas = _split_bundle(new_ca)
        with contextlib.suppress(OSError, ValueError):  # no bundle yet, or an unreadable one
            cas += [pem for pem in _split_bundle(self.ca_path.read_bytes()) if pem not in cas]
        return b"".join(cas)

    def _publish(self, cert: bytes, key: bytes, ca: bytes) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        stamp = datetime.now(UTC).strftime("%Y_%m_%d_%H_%M_%S.%f")
        version = self.directory / f"..{stamp}_{secrets.token_hex(4)}"
        version.mkdir(mode=0o700)
        write_private(version / KEY_NAME, key)
        write_private(version / CERT_NAME, cert, mode=0o644)
        write_private(version / CA_NAME, ca, mode=0o644)
        data = self.directory / _DATA
        previous = os.readlink(data) if data.is_symlink() else None
        tmp = self.directory / f"..data_{secrets.token_hex(4)}"
        os.symlink(version.name, tmp)
        os.replace(tmp, data)
        for name in (CERT_NAME, KEY_NAME, CA_NAME):
            link = self.directory / name
            if not link.is_symlink():
                link.unlink(missing_ok=True)
                os.symlink(f"{_DATA}/{name}", link)
        keep = {version.name, previous}
        for old in self.directory.glob("..*"):
            if old.name != _DATA and old.name not in keep and old.is_dir() and not old.is_symlink():
                shutil.rmtree(old, ignore_errors=True)

    async def run(self, stop: asyncio.Event, *, retry: float = 30.0) -> None:
        """Renew whenever due until ``stop`` is set; a failed issue is retried after ``retry``."""
        while not stop.is_set():
            delay = retry
            try:
                await self.ensure()
                when = self.renew_at()
                if when is not None:
                    delay = max(1.0, (when - self._clock()).total_seconds())
            except (SecretsBackendUnavailable, OSError, ValueError) as exc:
                # the certificate in use stays; the loop must outlive any answer or disk error
                self.error = str(exc).splitlines()[0][:300] if str(exc) else repr(exc)
                log.error("tls.renew.failed", name=self.common_name, error=self.error)
            try:
                await asyncio.wait_for(stop.wait(), timeout=delay)
            except TimeoutError:
                continue

"""The signed catalog: ``catalog.json`` plus its detached CMS signature ``catalog.json.p7s``.

``catalog.json`` (format version 1) lists every file of a package by ``/``-separated relative path
with its SHA-256, its size and its status: ``signed`` (carries our Authenticode signature),
``unsigned`` (not a signable file) or ``excluded`` (signable but matched by the exclusion list;
kept byte-identical). ``catalog.json.p7s`` is a DER CMS/PKCS#7 SignedData over the exact bytes of
``catalog.json``, detached, made with the code-signing certificate and carrying its chain.

Signature verification uses ``openssl cms -verify`` (cryptography has no PKCS#7 verifier):
``-CAfile`` is the ``--ca`` the caller trusts or, without one, the self-signed roots embedded in
the signature (which proves integrity and consistency, not who signed).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import ExtendedKeyUsageOID

from stockade.core import InvalidInput, ToolMissing

from ._signing import CodeSigningCertificate, source_date_epoch

__all__ = [
    "CATALOG_NAME",
    "CATALOG_SIGNATURE_NAME",
    "FORMAT_VERSION",
    "Catalog",
    "CatalogEntry",
    "FileStatus",
    "hash_file",
    "hash_files",
    "sign_catalog",
    "verify_catalog_signature",
    "write_cdf",
]

CATALOG_NAME = "catalog.json"
CATALOG_SIGNATURE_NAME = "catalog.json.p7s"
FORMAT_VERSION = 1
FileStatus = Literal["signed", "unsigned", "excluded"]
_STATUSES: frozenset[str] = frozenset({"signed", "unsigned", "excluded"})
_CHUNK = 1 << 20


def hash_file(path: Path) -> tuple[str, int]:
    """SHA-256 (hex) and size of ``path``, read in 1 MiB chunks (hashlib drops the GIL)."""
    digest = hashlib.sha256()
    size = 0
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    with path.open("rb", buffering=0) as handle:
        while count := handle.readinto(view):
            digest.update(view[:count])
            size += count
    return digest.hexdigest(), size


def hash_files(
    paths: Sequence[Path],
    *,
    workers: int | None = None,
    on_done: Callable[[int], None] | None = None,
) -> list[tuple[str, int]]:
    """Hash ``paths`` in parallel threads; results in input order.

    An unreadable file is an :class:`InvalidInput` naming it.
    """

    def one(path: Path) -> tuple[str, int]:
        try:
            result = hash_file(path)
        except OSError as exc:
            raise InvalidInput(
                str(path), f"cannot read it ({exc.strerror}); fix its permissions or remove it"
            ) from exc
        if on_done is not None:
            on_done(result[1])
        return result

    count = workers or min(8, os.cpu_count() or 1)
    if count == 1 or len(paths) < 2:
        return [one(p) for p in paths]
    with ThreadPoolExecutor(max_workers=count, thread_name_prefix="hash") as pool:
        return list(pool.map(one, paths))


@dataclass(frozen=True)
class CatalogEntry:
    """One file of the catalog."""

    sha256: str
    size: int
    status: FileStatus


def _created_now() -> datetime:
    """Now, or ``SOURCE_DATE_EPOCH`` when set (reproducible builds)."""
    epoch = source_date_epoch()
    if epoch is not None:
        return datetime.fromtimestamp(epoch, UTC)
    return datetime.now(UTC).replace(microsecond=0)


@dataclass(frozen=True)
class Catalog:
    """What ``catalog.json`` holds."""

    files: Mapping[str, CatalogEntry]
    created: datetime = field(default_factory=_created_now)
    format_version: int = FORMAT_VERSION
    signer: str = ""

    def to_json(self) -> bytes:
        """The canonical bytes of ``catalog.json`` (sorted keys, two-space indent)."""
        document = {
            "format_version": self.format_version,
            "created": self.created.isoformat().replace("+00:00", "Z"),
            "signer": self.signer,
            "files": {
                path: {"sha256": e.sha256, "size": e.size, "status": e.status}
                for path, e in sorted(self.files.items())
            },
        }
        return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes, *, source: str = CATALOG_NAME) -> Catalog:
        """Parse ``catalog.json``; a malformed document is an InvalidInput naming ``source``."""
        try:
            document = json.loads(data)
            version = document["format_version"]
            if version != FORMAT_VERSION:
                raise InvalidInput(source, f"unsupported catalog format version {version!r}")
            files: dict[str, CatalogEntry] = {}
            for path, entry in document["files"].items():
                status = entry["status"]
                if status not in _STATUSES:
                    raise ValueError(f"unknown status {status!r} for {path}")
                _check_relpath(path, source)
                files[path] = CatalogEntry(
                    sha256=str(entry["sha256"]), size=int(entry["size"]), status=status
                )
            created = datetime.fromisoformat(str(document["created"]).replace("Z", "+00:00"))
            return cls(
                files=files,
                created=created,
                format_version=version,
                signer=str(document.get("signer", "")),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InvalidInput(source, f"malformed catalog: {exc}") from exc


def _check_relpath(path: str, source: str) -> None:
    pure = PurePosixPath(path)
    if pure.is_absolute() or ".." in pure.parts or "\\" in path or not path:
        raise InvalidInput(source, f"catalog lists an unsafe path {path!r}")


def sign_catalog(data: bytes, cert: CodeSigningCertificate) -> bytes:
    """A detached DER CMS signature over ``data`` by ``cert``, carrying its chain.

    With ``SOURCE_DATE_EPOCH`` set it carries no signed attributes (so no signing time): the
    signature then depends only on the data and the key (deterministic for RSA).
    """
    builder = (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(data)
        .add_signer(cert.certificate, cert.key, hashes.SHA256())
    )
    for extra in cert.chain:
        builder = builder.add_certificate(extra)
    options = [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Binary]
    if source_date_epoch() is not None:
        options.append(pkcs7.PKCS7Options.NoAttributes)
    return builder.sign(serialization.Encoding.DER, options)


def _openssl() -> str:
    found = shutil.which("openssl")
    if not found:
        raise ToolMissing("openssl", "openssl")
    return found


def embedded_roots(signature: bytes) -> list[x509.Certificate]:
    """Self-signed certificates carried inside a DER CMS signature (may be empty)."""
    try:
        certs = pkcs7.load_der_pkcs7_certificates(signature)
    except ValueError:
        return []
    return [c for c in certs if c.issuer == c.subject]


def verify_catalog_signature(data: bytes, signature: bytes, ca_file: Path | None) -> list[str]:
    """Check ``signature`` over ``data``; return the problems found (empty when it holds).

    The signer must chain to ``ca_file`` (or, without it, to a root embedded in the signature)
    and carry the ``codeSigning`` extended key usage.
    """
    with tempfile.TemporaryDirectory(prefix="stockade-cms-") as tmp:
        work = Path(tmp)
        (work / "data").write_bytes(data)
        (work / "sig").write_bytes(signature)
        if ca_file is None:
            roots = embedded_roots(signature)
            if not roots:
                return ["signature carries no root certificate; pass --ca CA.pem to verify it"]
            ca_file = work / "roots.pem"
            ca_file.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in roots))
        done = subprocess.run(
            [
                _openssl(),
                "cms",
                "-verify",
                "-inform",
                "DER",
                "-in",
                str(work / "sig"),
                "-content",
                str(work / "data"),
                "-binary",
                "-purpose",
                "any",
                "-CAfile",
                str(ca_file),
                "-signer",
                str(work / "signer.pem"),
                "-out",
                os.devnull,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            return [_cms_reason(done.stderr)]
        signers = x509.load_pem_x509_certificates((work / "signer.pem").read_bytes())
    problems = []
    for signer in signers:
        try:
            eku = signer.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
            ok = ExtendedKeyUsageOID.CODE_SIGNING in eku
        except x509.ExtensionNotFound:
            ok = False
        if not ok:
            problems.append(
                f"signer {signer.subject.rfc4514_string()} is not a code-signing certificate"
            )
    return problems


def _cms_reason(stderr: str) -> str:
    text = stderr.lower()
    if "digest failure" in text or "content verify error" in text or "bad signature" in text:
        return "signature does not match the catalog (catalog or signature changed)"
    if "certificate verify error" in text or "unable to get" in text:
        return "signer does not chain to the trusted CA"
    if "asn1" in text or "decode" in text or "no content type" in text:
        return "signature is not a valid DER CMS structure"
    first = next((line for line in stderr.splitlines() if line.strip()), "unknown error")
    return f"signature verification failed: {first.strip()[:200]}"


def write_cdf(
    catalog: Catalog, relpaths: Iterable[str], out: Path, *, name: str = "package.cat"
) -> None:
    """Write a makecat catalog definition file (CDF) listing ``relpaths`` of ``catalog``.

    Paths are Windows-style and relative, so run ``makecat`` from the package's root.
    """
    lines = [
        "[CatalogHeader]",
        f"Name={name}",
        "ResultDir=.",
        "PublicVersion=0x0000001",
        "EncodingType=0x00010001",
        "CATATTR1=0x10010001:OSAttr:2:10.0",
        "",
        "[CatalogFiles]",
    ]
    for rel in sorted(relpaths):
        if rel not in catalog.files:
            continue
        windows = str(PureWindowsPath(*PurePosixPath(rel).parts))
        lines.append(f"<hash>{windows}={windows}")
        lines.append(f"<hash>{windows}ATTR1=0x10010001:File:{PurePosixPath(rel).name}")
    out.write_text("\r\n".join(lines) + "\r\n", encoding="utf-8")

"""Authenticode signing with ``osslsigncode``, and the code-signing certificate it uses.

The certificate is loaded and checked in Python before any file is touched (PFX password,
validity window, ``codeSigning`` extended key usage, ``digitalSignature`` key usage), so a bad
certificate is one clear line instead of a failure per file. ``osslsigncode`` reads the PFX
password from a 0600 file (``-readpass``) that lives only while signing; it never reaches argv.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID

from stockade.core import BackendError, InvalidInput, ToolMissing

__all__ = [
    "OSSLSIGNCODE_MIN_PS",
    "CodeSigningCertificate",
    "Osslsigncode",
    "SignResult",
    "load_certificate",
    "read_password",
    "sign_files",
    "source_date_epoch",
]

#: osslsigncode signs PowerShell files (.ps1 .psm1 .psd1 .ps1xml .cdxml) from this version on.
OSSLSIGNCODE_MIN_PS = (2, 8)

SigningKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclass(frozen=True, repr=False)
class CodeSigningCertificate:
    """A checked code-signing certificate: its PFX, password, key, leaf and chain."""

    pfx: Path
    password: bytes = field(repr=False)
    key: SigningKey = field(repr=False)
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]

    def __repr__(self) -> str:
        return f"CodeSigningCertificate(pfx={str(self.pfx)!r}, subject={self.subject!r})"

    @property
    def subject(self) -> str:
        """The leaf's subject in RFC 4514 form."""
        return self.certificate.subject.rfc4514_string()

    def trust_anchors_pem(self) -> bytes:
        """PEM of the chain's self-signed roots, or of the leaf when it is self-signed.

        Used as ``-CAfile`` when checking a signature right after making it: it proves the
        file carries an intact signature by this certificate.
        """
        roots = [c for c in (*self.chain, self.certificate) if c.issuer == c.subject]
        chosen = roots or [self.certificate, *self.chain]
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chosen)


def _has_code_signing_eku(cert: x509.Certificate) -> bool:
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return False
    return ExtendedKeyUsageOID.CODE_SIGNING in eku


def _key_usage_allows_signing(cert: x509.Certificate) -> bool:
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return True
    return usage.digital_signature


def load_certificate(
    pfx: Path, password: bytes | None, *, now: datetime | None = None
) -> CodeSigningCertificate:
    """Load ``pfx`` and check it can sign code now; every failure names the file and the fix."""
    field_name = str(pfx)
    try:
        data = pfx.read_bytes()
    except OSError as exc:
        raise InvalidInput(
            field_name, f"cannot read the certificate ({exc.strerror}); pass a readable PFX file"
        ) from exc
    try:
        key, cert, extra = pkcs12.load_key_and_certificates(data, password)
    except ValueError as exc:
        raise InvalidInput(
            field_name,
            "wrong PFX password or not a PKCS#12 file; check --password-env/--password-file",
        ) from exc
    if cert is None or key is None:
        raise InvalidInput(field_name, "the PFX holds no certificate with its private key")
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise InvalidInput(field_name, "the PFX key must be RSA or ECDSA for Authenticode")
    moment = now or datetime.now(UTC)
    subject = cert.subject.rfc4514_string()
    if moment < cert.not_valid_before_utc:
        raise InvalidInput(
            field_name,
            f"certificate {subject} is not valid before {cert.not_valid_before_utc:%Y-%m-%d};"
            " use a current certificate",
        )
    if moment > cert.not_valid_after_utc:
        raise InvalidInput(
            field_name,
            f"certificate {subject} expired on {cert.not_valid_after_utc:%Y-%m-%d};"
            " renew it or pass a current one",
        )
    if not _has_code_signing_eku(cert) or not _key_usage_allows_signing(cert):
        raise InvalidInput(
            field_name,
            f"certificate {subject} is not a code-signing certificate (needs extended key"
            " usage codeSigning and key usage digitalSignature); use a code-signing certificate",
        )
    return CodeSigningCertificate(
        pfx=pfx,
        password=password or b"",
        key=key,
        certificate=cert,
        chain=tuple(extra),
    )


def source_date_epoch() -> int | None:
    """``SOURCE_DATE_EPOCH`` (reproducible-builds.org) as seconds, None when unset.

    With it set, the catalog's ``created``, its CMS signature (no signed attributes, so no
    signing time) and every Authenticode signing time (``osslsigncode -time``) come from it, so
    two builds of one tree with one RSA key are byte-identical. ECDSA signatures are randomized
    and RFC 3161 timestamps vary: builds with either differ, by design.
    """
    text = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not text:
        return None
    if not text.isascii() or not text.isdigit() or len(text) > 12:
        raise InvalidInput(
            "SOURCE_DATE_EPOCH",
            f"expected whole seconds since 1970 (e.g. 1700000000), got {text!r}",
        )
    return int(text)


@dataclass(frozen=True)
class SignResult:
    """The outcome of signing one file: ``error`` is empty when it was signed and verified."""

    source: Path
    output: Path
    error: str = ""


def _tail(text: str, limit: int = 300) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("Succeeded", "Failed"))]
    return " / ".join(useful[-3:] or lines[-1:])[:limit]


class Osslsigncode:
    """The ``osslsigncode`` program: sign and verify Authenticode signatures."""

    def __init__(self, program: str | None = None) -> None:
        found = program or shutil.which("osslsigncode")
        if not found:
            raise ToolMissing("osslsigncode", "osslsigncode")
        self.program = found
        self.version = self._read_version()

    def _read_version(self) -> tuple[int, int]:
        try:
            out = subprocess.run(
                [self.program, "--version"], capture_output=True, text=True, check=False
            )
        except OSError as exc:
            raise ToolMissing("osslsigncode", "osslsigncode") from exc
        match = re.search(r"osslsigncode (\d+)\.(\d+)", out.stdout + out.stderr)
        return (int(match.group(1)), int(match.group(2))) if match else (0, 0)

    def require_powershell_support(self, path: str) -> None:
        """Raise unless this osslsigncode can sign PowerShell files like ``path``."""
        if self.version < OSSLSIGNCODE_MIN_PS:
            have = ".".join(map(str, self.version))
            raise BackendError(
                f"{path}: osslsigncode {have} cannot sign PowerShell files; install"
                " osslsigncode >= 2.8 (Debian trixie or bookworm-backports)"
            )

    def sign(
        self,
        source: Path,
        output: Path,
        cert: CodeSigningCertificate,
        password_file: Path | None,
        *,
        timestamp_url: str | None = None,
        description: str | None = None,
    ) -> str:
        """Sign ``source`` into ``output``; return "" or the reason it failed."""
        cmd = [self.program, "sign", "-pkcs12", str(cert.pfx), "-h", "sha256"]
        if password_file is not None:
            cmd += ["-readpass", str(password_file)]
        if description:
            cmd += ["-n", description]
        if timestamp_url:
            cmd += ["-ts", timestamp_url]
        epoch = source_date_epoch()
        if epoch is not None:
            cmd += ["-time", str(epoch)]
        cmd += ["-in", str(source), "-out", str(output)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            output.unlink(missing_ok=True)
            return "signing failed: " + _tail(done.stdout + "\n" + done.stderr)
        return ""

    def verify(self, path: Path, ca_file: Path | None) -> str:
        """Check ``path``'s Authenticode signature; return "" or the reason it failed."""
        cmd = [self.program, "verify", "-in", str(path)]
        if ca_file is not None:
            cmd += ["-CAfile", str(ca_file)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode == 0:
            return ""
        text = done.stdout + "\n" + done.stderr
        if "Unable to extract existing signature" in text or "No signature found" in text:
            return "Authenticode: no signature"
        if "MISMATCH" in text:
            return "Authenticode: digest mismatch (file changed after signing)"
        if "Signature verification: failed" in text:
            return "Authenticode: signature verification failed"
        return "Authenticode: " + _tail(text)

    def has_signature(self, path: Path) -> bool:
        """Whether ``path`` carries an Authenticode signature at all (trusted or not)."""
        with tempfile.TemporaryDirectory(prefix="stockade-sig-") as tmp:
            done = subprocess.run(
                [self.program, "extract-signature", "-in", str(path), "-out", f"{tmp}/sig"],
                capture_output=True,
                check=False,
            )
        return done.returncode == 0


@contextmanager
def secret_file(secret: bytes) -> Iterator[Path]:
    """A 0600 file holding ``secret`` in a private directory, removed on exit."""
    with tempfile.TemporaryDirectory(prefix="stockade-pass-") as tmp:
        path = Path(tmp) / "pass"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(secret)
        try:
            yield path
        finally:
            path.unlink(missing_ok=True)


@contextmanager
def _anchor_file(cert: CodeSigningCertificate) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="stockade-ca-") as tmp:
        path = Path(tmp) / "anchors.pem"
        path.write_bytes(cert.trust_anchors_pem())
        yield path


def sign_files(
    tool: Osslsigncode,
    cert: CodeSigningCertificate,
    jobs: Sequence[tuple[Path, Path]],
    *,
    timestamp_url: str | None = None,
    workers: int | None = None,
    on_done: Callable[[SignResult], None] | None = None,
) -> list[SignResult]:
    """Sign each ``(source, output)`` in parallel and verify each signature right after.

    Results come back in the order of ``jobs``; ``on_done`` is called as each one finishes
    (from worker threads), e.g. to advance a progress bar.
    """
    count = workers or os.cpu_count() or 1

    with secret_file(cert.password) as pass_file, _anchor_file(cert) as anchors:
        use_pass = pass_file if cert.password else None

        def one(job: tuple[Path, Path]) -> SignResult:
            source, output = job
            output.parent.mkdir(parents=True, exist_ok=True)
            error = tool.sign(source, output, cert, use_pass, timestamp_url=timestamp_url)
            if not error:
                error = tool.verify(output, anchors)
            result = SignResult(source=source, output=output, error=error)
            if on_done is not None:
                on_done(result)
            return result

        with ThreadPoolExecutor(max_workers=count, thread_name_prefix="sign") as pool:
            return list(pool.map(one, jobs))


def read_password(*, env: str | None = None, file: Path | None = None) -> bytes | None:
    """The PFX password from the environment variable ``env`` or from ``file`` (one line).

    Neither given: None (a PFX without password). A named variable that is unset, or an
    unreadable file, is an :class:`InvalidInput` saying how to fix it.
    """
    if env and file:
        raise InvalidInput("--password-env/--password-file", "give only one of them")
    if env:
        value = os.environ.get(env)
        if value is None:
            raise InvalidInput(
                "--password-env", f"environment variable {env} is not set; export it first"
            )
        return value.encode()
    if file:
        try:
            text = file.read_bytes()
        except OSError as exc:
            raise InvalidInput(
                str(file), f"cannot read the password file ({exc.strerror}); check the path"
            ) from exc
        return text.removesuffix(b"\n").removesuffix(b"\r")
    return None

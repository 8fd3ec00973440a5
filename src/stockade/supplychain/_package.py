"""Building a signed package, writing a catalog for a tree, and verifying either.

``build_package`` decides first (walk, classify, check the certificate and the tool), then signs
into a private staging directory beside the output, catalogs the final bytes, and zips
deterministically to a temporary file renamed over the output at the end: a failure at any step
leaves the output untouched.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives import serialization

from stockade.core import InvalidInput

from ._catalog import (
    CATALOG_NAME,
    CATALOG_SIGNATURE_NAME,
    Catalog,
    CatalogEntry,
    FileStatus,
    embedded_roots,
    hash_files,
    sign_catalog,
    verify_catalog_signature,
    write_cdf,
)
from ._select import POWERSHELL_EXTENSIONS, ExclusionList, is_signable, walk_files
from ._signing import CodeSigningCertificate, Osslsigncode, SignResult, sign_files
from ._zipsafe import ZipLimits, safe_extract, write_deterministic_zip

__all__ = [
    "BuildSummary",
    "Problem",
    "Progress",
    "VerifyReport",
    "build_package",
    "create_catalog",
    "verify_package",
]

_CATALOG_FILES = (CATALOG_NAME, CATALOG_SIGNATURE_NAME)


class Progress(Protocol):
    """Where long work reports how far it got (a rich progress bar on a TTY, or nothing)."""

    def phase(self, name: str, total: int) -> None:
        """A new phase of ``total`` steps begins."""

    def advance(self, amount: int = 1) -> None:
        """``amount`` more steps of the current phase are done (thread-safe)."""


class _Silent:
    def phase(self, name: str, total: int) -> None:
        return None

    def advance(self, amount: int = 1) -> None:
        return None


@dataclass(frozen=True)
class BuildSummary:
    """What a build produced."""

    output: Path
    catalog: Catalog

    def count(self, status: FileStatus) -> int:
        """How many files have ``status``."""
        return sum(1 for e in self.catalog.files.values() if e.status == status)


@dataclass(frozen=True)
class Problem:
    """One reason a package does not verify, named by path."""

    path: str
    reason: str


@dataclass
class VerifyReport:
    """Everything ``verify_package`` found; ``ok`` only when there is no problem."""

    problems: list[Problem] = field(default_factory=list)
    files_checked: int = 0
    signatures_checked: int = 0
    anchored: bool = False

    @property
    def ok(self) -> bool:
        """True when every check held."""
        return not self.problems


def _classify(files: list[tuple[str, Path]], exclusions: ExclusionList) -> dict[str, FileStatus]:
    statuses: dict[str, FileStatus] = {}
    for rel, path in files:
        if exclusions.match(rel) is not None:
            statuses[rel] = "excluded"
            continue
        try:
            signable = is_signable(path)
        except OSError as exc:
            raise InvalidInput(
                str(path), f"cannot read it ({exc.strerror}); fix its permissions or remove it"
            ) from exc
        statuses[rel] = "signed" if signable else "unsigned"
    return statuses


def _source_files(src: Path) -> list[tuple[str, Path]]:
    if not src.is_dir():
        raise InvalidInput(str(src), "not a directory; pass the tree to package")
    files = list(walk_files(src))
    for name in _CATALOG_FILES:
        if (src / name).exists():
            raise InvalidInput(
                str(src / name), "reserved for the package's catalog; rename or remove it"
            )
    return files


def _catalog_for(
    files: list[tuple[str, Path]],
    statuses: dict[str, FileStatus],
    signer: str,
    progress: Progress,
    workers: int | None,
) -> Catalog:
    progress.phase("hashing", sum(p.stat().st_size for _, p in files))
    digests = hash_files([p for _, p in files], workers=workers, on_done=progress.advance)
    entries = {
        rel: CatalogEntry(sha256=digest, size=size, status=statuses[rel])
        for (rel, _), (digest, size) in zip(files, digests, strict=True)
    }
    return Catalog(files=entries, signer=signer)


def _check_powershell(tool: Osslsigncode, rels: list[str]) -> None:
    for rel in rels:
        if Path(rel).suffix.lower() in POWERSHELL_EXTENSIONS:
            tool.require_powershell_support(rel)
            return


def build_package(
    src: Path,
    out: Path,
    cert: CodeSigningCertificate,
    *,
    exclusions: ExclusionList | None = None,
    timestamp_url: str | None = None,
    workers: int | None = None,
    tool: Osslsigncode | None = None,
    progress: Progress | None = None,
) -> BuildSummary:
    """Sign, catalog and zip ``src`` into ``out`` (see the module docstring)."""
    progress = progress or _Silent()
    files = _source_files(src)
    statuses = _classify(files, exclusions or ExclusionList())
    to_sign = [rel for rel, _ in files if statuses[rel] == "signed"]
    if to_sign:
        tool = tool or Osslsigncode()
        _check_powershell(tool, to_sign)
    if not out.parent.is_dir():
        raise InvalidInput(str(out), "its directory does not exist; create it first")
    with tempfile.TemporaryDirectory(prefix=".stockade-build-", dir=out.parent) as tmp:
        stage = Path(tmp)
        final = dict(files)
        if to_sign and tool is not None:
            progress.phase("signing", len(to_sign))

            def advance(_: SignResult) -> None:
                progress.advance()

            results = sign_files(
                tool,
                cert,
                [(final[rel], stage / "files" / rel) for rel in to_sign],
                timestamp_url=timestamp_url,
                workers=workers,
                on_done=advance,
            )
            failed = [(rel, r) for rel, r in zip(to_sign, results, strict=True) if r.error]
            if failed:
                rel, result = failed[0]
                more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
                raise InvalidInput(
                    str(result.source),
                    f"{result.error}{more}; fix the file or list it in --exclude-file",
                )
            for rel in to_sign:
                final[rel] = stage / "files" / rel
        ordered = sorted(final.items())
        catalog = _catalog_for(ordered, statuses, cert.subject, progress, workers)
        data = catalog.to_json()
        (stage / CATALOG_NAME).write_bytes(data)
        (stage / CATALOG_SIGNATURE_NAME).write_bytes(sign_catalog(data, cert))
        entries = [*ordered, *((name, stage / name) for name in _CATALOG_FILES)]
        progress.phase("zipping", len(entries))
        write_deterministic_zip(entries, out)
    return BuildSummary(output=out, catalog=catalog)


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def create_catalog(
    root: Path,
    cert: CodeSigningCertificate,
    *,
    exclusions: ExclusionList | None = None,
    cdf: Path | None = None,
    workers: int | None = None,
    tool: Osslsigncode | None = None,
    progress: Progress | None = None,
) -> Catalog:
    """Write ``catalog.json`` and ``catalog.json.p7s`` into ``root`` for its current files.

    A signable file is ``signed`` when it carries an Authenticode signature, else ``unsigned``;
    files matched by ``exclusions`` are ``excluded``.
    """
    progress = progress or _Silent()
    if not root.is_dir():
        raise InvalidInput(str(root), "not a directory; pass the tree to catalog")
    if cdf is not None and cdf.resolve().is_relative_to(root.resolve()):
        raise InvalidInput(
            str(cdf), "--cdf must be outside DIR, or it would be a file the catalog does not list"
        )
    files = list(walk_files(root, skip=_CATALOG_FILES))
    statuses = _classify(files, exclusions or ExclusionList())
    signable = [(rel, path) for rel, path in files if statuses[rel] == "signed"]
    if signable:
        tool = tool or Osslsigncode()
        progress.phase("checking signatures", len(signable))
        for rel, path in signable:
            if not tool.has_signature(path):
                statuses[rel] = "unsigned"
            progress.advance()
    catalog = _catalog_for(files, statuses, cert.subject, progress, workers)
    data = catalog.to_json()
    signature = sign_catalog(data, cert)
    _write_atomic(root / CATALOG_NAME, data)
    _write_atomic(root / CATALOG_SIGNATURE_NAME, signature)
    if cdf is not None:
        write_cdf(catalog, catalog.files, cdf)
    return catalog


def _present_files(root: Path, report: VerifyReport) -> dict[str, Path]:
    present: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        base = Path(dirpath)
        for name in sorted((*dirnames, *filenames)):
            path = base / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                report.problems.append(Problem(rel, "symbolic link (not allowed in a package)"))
            elif name in filenames:
                if not path.is_file():
                    report.problems.append(Problem(rel, "not a regular file"))
                elif rel not in _CATALOG_FILES:
                    present[rel] = path
    return present


def _verify_tree(
    root: Path,
    ca: Path | None,
    tool: Osslsigncode | None,
    workers: int | None,
    progress: Progress,
) -> VerifyReport:
    report = VerifyReport(anchored=ca is not None)
    try:
        data = (root / CATALOG_NAME).read_bytes()
    except OSError:
        report.problems.append(Problem(CATALOG_NAME, "missing: not a Stockade package"))
        return report
    try:
        signature = (root / CATALOG_SIGNATURE_NAME).read_bytes()
    except OSError:
        report.problems.append(Problem(CATALOG_SIGNATURE_NAME, "missing catalog signature"))
        signature = b""
    if signature:
        for reason in verify_catalog_signature(data, signature, ca):
            report.problems.append(Problem(CATALOG_SIGNATURE_NAME, reason))
    catalog = Catalog.from_json(data, source=str(root / CATALOG_NAME))
    present = _present_files(root, report)
    for rel in sorted(set(present) - set(catalog.files)):
        report.problems.append(Problem(rel, "extra file not listed in the catalog"))
    listed = sorted(rel for rel in catalog.files if rel in present)
    for rel in sorted(set(catalog.files) - set(present)):
        report.problems.append(Problem(rel, "missing file listed in the catalog"))
    progress.phase("hashing", sum(catalog.files[rel].size for rel in listed))
    digests = hash_files(
        [present[rel] for rel in listed], workers=workers, on_done=progress.advance
    )
    for rel, (digest, size) in zip(listed, digests, strict=True):
        entry = catalog.files[rel]
        if size != entry.size:
            report.problems.append(
                Problem(rel, f"size {size} differs from the catalog's {entry.size}")
            )
        elif digest != entry.sha256:
            report.problems.append(Problem(rel, "sha256 differs from the catalog (file changed)"))
    report.files_checked = len(listed)
    signed = [rel for rel in listed if catalog.files[rel].status == "signed"]
    if signed:
        tool = tool or Osslsigncode()
        _check_signatures(root, signed, present, ca, signature, tool, report, progress)
    return report


def _check_signatures(
    root: Path,
    signed: list[str],
    present: dict[str, Path],
    ca: Path | None,
    signature: bytes,
    tool: Osslsigncode,
    report: VerifyReport,
    progress: Progress,
) -> None:
    with tempfile.TemporaryDirectory(prefix="stockade-verify-") as tmp:
        anchors = ca
        if anchors is None:
            roots = embedded_roots(signature)
            if not roots:
                for rel in signed:
                    report.problems.append(
                        Problem(rel, "no trusted root to check Authenticode; pass --ca CA.pem")
                    )
                return
            anchors = Path(tmp) / "roots.pem"
            anchors.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in roots))
        progress.phase("verifying signatures", len(signed))

        def one(rel: str) -> str:
            reason = tool.verify(present[rel], anchors)
            progress.advance()
            return reason

        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            reasons = list(pool.map(one, signed))
    for rel, reason in zip(signed, reasons, strict=True):
        if reason:
            report.problems.append(Problem(rel, reason))
    report.signatures_checked = len(signed)


def verify_package(
    target: Path,
    *,
    ca: Path | None = None,
    workers: int | None = None,
    limits: ZipLimits | None = None,
    tool: Osslsigncode | None = None,
    progress: Progress | None = None,
) -> VerifyReport:
    """Check a package zip or an unpacked directory against its signed catalog.

    A zip is extracted safely (:func:`safe_extract`) into a private temporary directory first.
    """
    progress = progress or _Silent()
    if ca is not None and not ca.is_file():
        raise InvalidInput(str(ca), "CA file not found; pass the PEM of the signing CA")
    if target.is_dir():
        return _verify_tree(target, ca, tool, workers, progress)
    if not target.is_file():
        raise InvalidInput(str(target), "no such package zip or directory")
    if not zipfile.is_zipfile(target):
        raise InvalidInput(str(target), "not a zip archive or a directory")
    with tempfile.TemporaryDirectory(prefix="stockade-unpack-") as tmp:
        root = Path(tmp) / "package"
        safe_extract(target, root, limits, first=CATALOG_NAME)
        return _verify_tree(root, ca, tool, workers, progress)

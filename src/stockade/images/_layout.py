"""OCI image layouts on disk: parse ``oci:DIR[:TAG]``, read checked JSON blobs, write atomically.

Everything read from a layout is hostile until checked: digests must be ``sha256:`` + 64 hex
(so a digest never walks out of ``blobs/``), JSON blobs are size-capped and checked against their
digest and size before parsing, and media types must be OCI's (or Docker's schema 2, which
skopeo and umoci also read). A :class:`LayoutWriter` builds the output in a temporary directory
beside the destination and renames it into place only on success, so a failure leaves nothing.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import platform as host_platform
import re
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stockade.core.errors import InvalidInput, NotFound

from ._errors import IntegrityError

__all__ = [
    "INDEX_MEDIA_TYPES",
    "LAYER_MEDIA_TYPES",
    "MANIFEST_MEDIA_TYPES",
    "REF_NAME",
    "ImageRef",
    "Layout",
    "LayoutWriter",
    "Platform",
    "ResolvedImage",
    "check_digest",
]

REF_NAME = "org.opencontainers.image.ref.name"
MANIFEST_MEDIA_TYPES = frozenset(
    {
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    }
)
INDEX_MEDIA_TYPES = frozenset(
    {
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    }
)
_LAYER_BASES = (
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.docker.image.rootfs.diff.tar",
)
LAYER_MEDIA_TYPES = frozenset(
    base + suffix
    for base in _LAYER_BASES
    for suffix in (
        "",
        "+gzip",
        "+zstd",
        ".gzip",
        "+encrypted",
        "+gzip+encrypted",
        "+zstd+encrypted",
    )
)
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_MAX_JSON = 4 << 20
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")


def check_digest(value: object, where: str) -> str:
    """``value`` if it is a ``sha256:`` digest in canonical form, else :class:`InvalidInput`."""
    if not isinstance(value, str) or not _DIGEST.fullmatch(value):
        raise InvalidInput(where, f"digest {str(value)[:80]!r} is not sha256: and 64 hex digits")
    return value


@dataclass(frozen=True, slots=True)
class ImageRef:
    """``oci:DIR[:TAG]`` (the ``oci:`` prefix is optional on the command line)."""

    path: Path
    tag: str | None

    @classmethod
    def parse(cls, text: str, what: str) -> ImageRef:
        """Parse skopeo's ``oci:`` transport syntax; the tag is after the last colon."""
        body = text.removeprefix("oci:")
        if body.startswith(("docker://", "docker-archive:", "containers-storage:", "dir:")):
            raise InvalidInput(what, f"{text!r}: only OCI layouts (oci:DIR[:TAG]) are supported")
        path, sep, tag = body.rpartition(":")
        if not sep or "/" in tag:
            path, tag = body, ""
        if not path:
            raise InvalidInput(what, f"{text!r}: no directory")
        if tag and not _TAG.fullmatch(tag):
            raise InvalidInput(what, f"tag {tag!r} is not a valid reference name")
        return cls(Path(path), tag or None)

    def __str__(self) -> str:
        return f"oci:{self.path}" + (f":{self.tag}" if self.tag else "")


@dataclass(frozen=True, slots=True)
class Platform:
    """``os/arch[/variant]`` as ``--platform`` takes it."""

    os: str
    architecture: str
    variant: str | None = None

    @classmethod
    def parse(cls, text: str) -> Platform:
        """Parse ``linux/amd64`` or ``linux/arm64/v8``."""
        parts = text.split("/")
        if len(parts) not in {2, 3} or not all(parts):
            raise InvalidInput("--platform", f"{text!r}: expected OS/ARCH[/VARIANT]")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None)

    @classmethod
    def host(cls) -> Platform:
        """This machine's platform, in Go's architecture names."""
        machine = host_platform.machine().lower()
        arch = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}
        return cls("linux", arch.get(machine, machine))

    def matches(self, doc: object) -> bool:
        """Whether an index entry's ``platform`` object is this platform."""
        if not isinstance(doc, dict):
            return False
        if doc.get("os") != self.os or doc.get("architecture") != self.architecture:
            return False
        return self.variant is None or doc.get("variant") == self.variant

    def __str__(self) -> str:
        return f"{self.os}/{self.architecture}" + (f"/{self.variant}" if self.variant else "")


@dataclass(frozen=True, slots=True)
class ResolvedImage:
    """One image manifest chosen from a layout, with the descriptor that pointed at it."""

    descriptor: dict[str, Any]
    manifest: dict[str, Any]
    config: dict[str, Any]

    @property
    def layers(self) -> list[dict[str, Any]]:
        """The manifest's layer descriptors."""
        layers: list[dict[str, Any]] = self.manifest["layers"]
        return layers


class Layout:
    """A read-only view of an OCI image layout directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        marker = root / "oci-layout"
        try:
            with _open_regular(marker) as handle:
                layout = json.loads(handle.read(4096))
        except FileNotFoundError:
            raise InvalidInput(str(root), "not an OCI image layout (no oci-layout file)") from None
        except (OSError, ValueError, UnicodeDecodeError, RecursionError):
            raise InvalidInput(str(marker), "is not JSON") from None
        if not isinstance(layout, dict) or layout.get("imageLayoutVersion") != "1.0.0":
            raise InvalidInput(str(marker), "imageLayoutVersion is not 1.0.0")
        self.index = self._json_file(root / "index.json")
        self._check_index(self.index, str(root / "index.json"))

    def _json_file(self, path: Path) -> dict[str, Any]:
        try:
            with _open_regular(path) as handle:
                raw = handle.read(_MAX_JSON + 1)
        except FileNotFoundError:
            raise InvalidInput(str(path), "missing") from None
        except OSError as exc:
            raise InvalidInput(str(path), f"cannot read ({exc.strerror})") from None
        if len(raw) > _MAX_JSON:
            raise InvalidInput(str(path), f"larger than {_MAX_JSON} bytes")
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise InvalidInput(str(path), "is not JSON") from None
        if not isinstance(doc, dict):
            raise InvalidInput(str(path), "is not a JSON object")
        return doc

    @staticmethod
    def _check_index(doc: dict[str, Any], where: str) -> None:
        manifests = doc.get("manifests")
        if doc.get("schemaVersion") != 2 or not isinstance(manifests, list):
            raise InvalidInput(where, "not an OCI image index (schemaVersion 2 with manifests)")
        for n, entry in enumerate(manifests):
            _check_descriptor(entry, f"{where} manifests[{n}]")

    def blob_path(self, digest: str, where: str) -> Path:
        """The file of a blob (its digest checked first, so it stays inside ``blobs/``)."""
        check_digest(digest, where)
        return self.root / "blobs" / "sha256" / digest.removeprefix("sha256:")

    def open_blob(self, descriptor: dict[str, Any], where: str) -> Any:
        """Open a blob for streaming (checks are the reader's job: size and digest)."""
        path = self.blob_path(descriptor["digest"], where)
        try:
            return _open_regular(path)
        except FileNotFoundError:
            raise InvalidInput(where, f"blob {descriptor['digest']} is missing") from None
        except OSError as exc:
            raise InvalidInput(where, f"blob cannot be read ({exc.strerror})") from None

    def read_json_blob(self, descriptor: dict[str, Any], where: str) -> dict[str, Any]:
        """A small JSON blob, checked against the descriptor's size and digest, then parsed."""
        size = descriptor["size"]
        if size > _MAX_JSON:
            raise InvalidInput(where, f"descriptor size {size} is too large for a JSON blob")
        with self.open_blob(descriptor, where) as handle:
            raw = handle.read(size + 1)
        if len(raw) != size:
            raise InvalidInput(where, f"blob is {len(raw)} bytes; its descriptor says {size}")
        actual = "sha256:" + hashlib.sha256(raw).hexdigest()
        if actual != descriptor["digest"]:
            raise IntegrityError(f"{where}: blob digest {actual} does not match its descriptor")
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise InvalidInput(where, "blob is not JSON") from None
        if not isinstance(doc, dict):
            raise InvalidInput(where, "blob is not a JSON object")
        return doc

    def tags(self) -> list[str]:
        """Every ``org.opencontainers.image.ref.name`` in index.json."""
        return [
            str(m["annotations"][REF_NAME])
            for m in self.index["manifests"]
            if isinstance(m.get("annotations"), dict) and REF_NAME in m["annotations"]
        ]

    def resolve(self, tag: str | None, platform: Platform | None = None) -> ResolvedImage:
        """The image manifest named by ``tag`` (or the only one), through an index by platform."""
        where = str(self.root / "index.json")
        entries = self.index["manifests"]
        if tag is not None:
            entries = [
                m
                for m in entries
                if isinstance(m.get("annotations"), dict) and m["annotations"].get(REF_NAME) == tag
            ]
            if not entries:
                raise NotFound(f"tag in {self.root}", tag)
            if len(entries) > 1:
                raise InvalidInput(where, f"tag {tag!r} names {len(entries)} manifests; refused")
        elif len(entries) != 1:
            raise InvalidInput(
                str(self.root),
                f"holds {len(entries)} images; name one with oci:DIR:TAG"
                f" (tags: {', '.join(self.tags()) or 'none'})",
            )
        descriptor = entries[0]
        depth = 0
        while descriptor["mediaType"] in INDEX_MEDIA_TYPES:
            depth += 1
            if depth > 4:
                raise InvalidInput(where, "image indexes nest more than 4 deep")
            nested_where = f"index {descriptor['digest']}"
            nested = self.read_json_blob(descriptor, nested_where)
            self._check_index(nested, nested_where)
            wanted = platform or Platform.host()
            matches = [m for m in nested["manifests"] if wanted.matches(m.get("platform"))]
            if not matches:
                raise NotFound(f"platform in {nested_where}", str(wanted))
            descriptor = matches[0]
        if descriptor["mediaType"] not in MANIFEST_MEDIA_TYPES:
            raise InvalidInput(
                where, f"media type {descriptor['mediaType']!r} is not an image manifest"
            )
        manifest_where = f"manifest {descriptor['digest']}"
        manifest = self.read_json_blob(descriptor, manifest_where)
        layers = manifest.get("layers")
        config = manifest.get("config")
        if manifest.get("schemaVersion") != 2 or not isinstance(layers, list):
            raise InvalidInput(
                manifest_where, "not an image manifest (schemaVersion 2 with layers)"
            )
        _check_descriptor(config, f"{manifest_where} config")
        for n, layer in enumerate(layers):
            _check_descriptor(layer, f"{manifest_where} layer {n}")
            if layer["mediaType"] not in LAYER_MEDIA_TYPES:
                raise InvalidInput(
                    f"{manifest_where} layer {n}",
                    f"media type {layer['mediaType']!r} is not an OCI layer type",
                )
        assert isinstance(config, dict)
        self.read_json_blob(config, f"{manifest_where} config")
        return ResolvedImage(descriptor=descriptor, manifest=manifest, config=config)


def _open_regular(path: Path) -> Any:
    """Open ``path`` for reading only if it is a regular file (a FIFO or device would block)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "is not a regular file", str(path))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _check_descriptor(entry: object, where: str) -> None:
    if not isinstance(entry, dict):
        raise InvalidInput(where, "descriptor is not a JSON object")
    if not isinstance(entry.get("mediaType"), str):
        raise InvalidInput(where, "descriptor has no mediaType")
    check_digest(entry.get("digest"), where)
    size = entry.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidInput(where, "descriptor size is not a non-negative integer")
    annotations = entry.get("annotations", {})
    if not isinstance(annotations, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()
    ):
        raise InvalidInput(where, "annotations are not a map of strings")


class LayoutWriter:
    """Builds a new layout in a temporary sibling of ``dest``; :meth:`commit` renames it."""

    def __init__(self, dest: Path) -> None:
        if dest.exists() or dest.is_symlink():
            raise InvalidInput(str(dest), "exists already; choose a new directory")
        parent = dest.parent if str(dest.parent) else Path(".")
        if not parent.is_dir():
            raise InvalidInput(str(dest), f"parent directory {parent} does not exist")
        self.dest = dest
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=parent))
        (self.tmp / "blobs" / "sha256").mkdir(parents=True)
        self._done = False

    def __enter__(self) -> LayoutWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._done:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def temp_blob(self) -> tuple[Any, Path]:
        """A new temporary file inside the layout, for a blob whose digest is not yet known."""
        fd, name = tempfile.mkstemp(dir=self.tmp / "blobs", suffix=".tmp")
        return os.fdopen(fd, "wb"), Path(name)

    def adopt_blob(self, tmp: Path, digest: str) -> None:
        """Move a finished temporary blob to its content address."""
        os.replace(tmp, self.tmp / "blobs" / "sha256" / digest.removeprefix("sha256:"))

    def copy_blob(self, layout: Layout, descriptor: dict[str, Any], where: str) -> None:
        """Copy an unchanged blob, checking its size and digest on the way."""
        handle, tmp = self.temp_blob()
        digest = hashlib.sha256()
        count = 0
        with handle, layout.open_blob(descriptor, where) as src:
            while chunk := src.read(1 << 20):
                count += len(chunk)
                if count > descriptor["size"]:
                    break
                digest.update(chunk)
                handle.write(chunk)
        if count != descriptor["size"]:
            raise InvalidInput(
                where,
                f"blob is truncated or overlong: {count} bytes,"
                f" its descriptor says {descriptor['size']}",
            )
        if "sha256:" + digest.hexdigest() != descriptor["digest"]:
            raise IntegrityError(f"{where}: blob digest does not match its descriptor")
        self.adopt_blob(tmp, descriptor["digest"])

    def put_json(self, doc: dict[str, Any], media_type: str) -> dict[str, Any]:
        """Write a JSON blob; returns its descriptor."""
        raw = json.dumps(doc, separators=(",", ":")).encode()
        digest = "sha256:" + hashlib.sha256(raw).hexdigest()
        (self.tmp / "blobs" / "sha256" / digest.removeprefix("sha256:")).write_bytes(raw)
        return {"mediaType": media_type, "digest": digest, "size": len(raw)}

    def commit(self, manifest_descriptor: dict[str, Any], tag: str | None) -> None:
        """Write ``oci-layout`` and ``index.json`` and rename the directory into place."""
        entry = dict(manifest_descriptor)
        if tag:
            entry["annotations"] = {REF_NAME: tag}
        else:
            entry.pop("annotations", None)
        (self.tmp / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
        index = {"schemaVersion": 2, "manifests": [entry]}
        (self.tmp / "index.json").write_text(json.dumps(index, separators=(",", ":")))
        for leftover in (self.tmp / "blobs").glob("*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
        os.chmod(self.tmp, 0o755)  # noqa: S103 - a layout is public data, like skopeo's
        os.rename(self.tmp, self.dest)
        self._done = True

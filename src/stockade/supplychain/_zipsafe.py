"""Deterministic zip writing and safe zip extraction.

Writing: entries sorted by name, every timestamp 1980-01-01 00:00:00, mode 0644, no extra
fields, deflate level 6; the archive is written to a temporary file beside the target and renamed
over it at the end, so a failure leaves no half-written package.

Extraction decides first, then writes: every entry is checked before the first byte lands —
absolute paths, drive letters, ``..``, backslashes, links and other non-regular entries,
duplicate names (also case-insensitively), too many entries, a declared total above the limit,
and a compression ratio above the limit are refused with :class:`UnsafeArchive`. While writing,
each entry is cut off at its declared size (headers can lie), files are created exclusively and
never through a link, and every target path is checked to lie inside the target directory.
"""

from __future__ import annotations

import os
import stat
import tempfile
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from stockade.core import InvalidInput

__all__ = ["UnsafeArchive", "ZipLimits", "safe_extract", "write_deterministic_zip"]

_EPOCH = (1980, 1, 1, 0, 0, 0)
_MODE = 0o644
_COPY_CHUNK = 1 << 20


class UnsafeArchive(InvalidInput):
    """A zip entry that could escape the target or exhaust the disk; ``entry`` names it."""

    def __init__(self, archive: str, entry: str, problem: str) -> None:
        super().__init__(f"{archive}: entry {entry!r}", problem)
        self.entry = entry


@dataclass(frozen=True)
class ZipLimits:
    """Ceilings applied before extracting anything."""

    max_entries: int = 100_000
    """Most entries an archive may hold."""
    max_total_bytes: int = 8 << 30
    """Most uncompressed bytes in total (8 GiB)."""
    max_ratio: float = 200.0
    """Highest uncompressed/compressed ratio of one entry above ``ratio_floor`` bytes, and of
    the whole archive (all entries, small ones included) once its total passes ``ratio_floor``:
    a thousand small entries of zeros are a bomb as surely as one large one."""
    ratio_floor: int = 1 << 20
    """Entries (and archives) smaller than this are not held to ``max_ratio``."""


def write_deterministic_zip(files: Iterable[tuple[str, Path]], out: Path) -> None:
    """Zip ``(name, source)`` pairs into ``out`` deterministically and atomically."""
    entries = sorted(files)
    names = [name for name, _ in entries]
    if len(set(names)) != len(names):
        raise InvalidInput(str(out), "two files map to the same name in the package")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as raw, zipfile.ZipFile(raw, "w") as archive:
            for name, source in entries:
                info = zipfile.ZipInfo(name, date_time=_EPOCH)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.create_system = 3
                info.external_attr = (stat.S_IFREG | _MODE) << 16
                with (
                    source.open("rb") as src,
                    archive.open(info, "w", force_zip64=True) as dst,
                ):
                    while chunk := src.read(_COPY_CHUNK):
                        dst.write(chunk)
            archive.comment = b""
        os.chmod(tmp, _MODE)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _entry_problem(info: zipfile.ZipInfo) -> str:
    name = info.filename
    if not name or "\0" in name:
        return "empty or NUL in name"
    if "\\" in name:
        return "backslash in name (Windows path separator)"
    pure = PurePosixPath(name)
    if pure.is_absolute() or (len(name) > 1 and name[1] == ":"):
        return "absolute path"
    if ".." in pure.parts:
        return "path traversal ('..')"
    mode = info.external_attr >> 16
    kind = stat.S_IFMT(mode)
    if info.create_system == 3 and kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        return "symbolic link" if kind == stat.S_IFLNK else "special file (not a regular file)"
    return ""


def safe_extract(
    archive_path: Path,
    target: Path,
    limits: ZipLimits | None = None,
    *,
    first: str | None = None,
) -> list[str]:
    """Extract ``archive_path`` into ``target`` (created, must be empty); return the file names.

    Raises :class:`UnsafeArchive` naming the first offending entry before writing anything.
    ``first`` names an entry that must exist and is extracted before any other (a package's
    ``catalog.json``): an archive without it is refused before anything is written.
    """
    limits = limits or ZipLimits()
    label = str(archive_path)
    try:
        archive = zipfile.ZipFile(archive_path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise InvalidInput(label, f"not a readable zip archive ({exc})") from exc
    with archive:
        infos = archive.infolist()
        if len(infos) > limits.max_entries:
            raise UnsafeArchive(label, "*", f"more than {limits.max_entries} entries")
        seen: set[str] = set()
        total = 0
        compressed = 0
        for info in infos:
            problem = _entry_problem(info)
            if problem:
                raise UnsafeArchive(label, info.filename, problem)
            key = info.filename.rstrip("/").casefold()
            if key in seen:
                raise UnsafeArchive(label, info.filename, "duplicate name")
            seen.add(key)
            total += info.file_size
            if total > limits.max_total_bytes:
                raise UnsafeArchive(
                    label, info.filename, f"total size over the {limits.max_total_bytes} byte limit"
                )
            compressed += info.compress_size
            if info.file_size > limits.ratio_floor:
                ratio = info.file_size / max(info.compress_size, 1)
                if ratio > limits.max_ratio:
                    raise UnsafeArchive(
                        label,
                        info.filename,
                        f"compression ratio {ratio:.0f}:1 over the {limits.max_ratio:.0f}:1 limit",
                    )
        if total > limits.ratio_floor:
            ratio = total / max(compressed, 1)
            if ratio > limits.max_ratio:
                raise UnsafeArchive(
                    label,
                    "*",
                    f"archive compression ratio {ratio:.0f}:1 ({total} bytes from {compressed})"
                    f" over the {limits.max_ratio:.0f}:1 limit",
                )
        if first is not None:
            leading = [i for i in infos if i.filename == first]
            if not leading or leading[0].is_dir():
                raise UnsafeArchive(label, first, "missing: not a Stockade package")
            infos = [*leading, *(i for i in infos if i.filename != first)]
        target.mkdir(parents=True, exist_ok=True)
        root = target.resolve()
        names: list[str] = []
        for info in infos:
            dest = root.joinpath(*PurePosixPath(info.filename).parts)
            if not dest.resolve().is_relative_to(root):
                raise UnsafeArchive(label, info.filename, "resolves outside the target directory")
            if info.is_dir():
                dest.mkdir(parents=True, exist_ok=True)
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            if not dest.parent.resolve().is_relative_to(root):
                raise UnsafeArchive(label, info.filename, "resolves outside the target directory")
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
            fd = os.open(dest, flags, _MODE)
            try:
                with os.fdopen(fd, "wb") as out, archive.open(info) as src:
                    remaining = info.file_size
                    while chunk := src.read(min(_COPY_CHUNK, remaining + 1)):
                        remaining -= len(chunk)
                        if remaining < 0:
                            raise UnsafeArchive(label, info.filename, "more data than declared")
                        out.write(chunk)
            except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
                raise UnsafeArchive(label, info.filename, f"corrupt entry ({exc})") from exc
            names.append(info.filename)
        return names

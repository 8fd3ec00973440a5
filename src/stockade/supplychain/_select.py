"""Which files of a tree are signable, and which are excluded from signing.

A file is *signable* when its extension is one Authenticode covers (:data:`SIGNABLE_EXTENSIONS`)
or when its first bytes are a PE image ("MZ" with a "PE\\0\\0" header where ``e_lfanew`` points)
or an OLE compound file (MSI, ``D0 CF 11 E0 A1 B1 1A E1``).

A file is *excluded* when its path relative to the tree matches an exclusion pattern. Patterns are
shell globs (``fnmatch``, ``*`` also crosses ``/``), one per line, ``#`` starts a comment. A pattern
without ``/`` matches the file name at any depth; one with ``/`` matches the whole relative path;
a trailing ``/`` matches everything below that directory. Excluded files are packaged
byte-identical and listed as ``excluded`` in the catalog.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from stockade.core import InvalidInput

__all__ = [
    "DEFAULT_EXCLUDES",
    "POWERSHELL_EXTENSIONS",
    "SIGNABLE_EXTENSIONS",
    "ExclusionList",
    "is_signable",
    "walk_files",
]

POWERSHELL_EXTENSIONS = frozenset({".ps1", ".psm1", ".psd1", ".ps1xml", ".cdxml"})
SIGNABLE_EXTENSIONS = frozenset({".exe", ".dll", ".msi", ".cab", ".cat"} | POWERSHELL_EXTENSIONS)

_MSI_MAGIC = bytes.fromhex("D0CF11E0A1B11AE1")

#: Vendored third-party binaries are signed by their publishers and must not be re-signed:
#: they are packaged as they are and listed as ``excluded``. Replace or extend with
#: ``--exclude-file``; ``--no-default-excludes`` drops this list.
DEFAULT_EXCLUDES: tuple[str, ...] = (
    "third_party/",
    "third-party/",
    "thirdparty/",
    "vendor/",
    "vendored/",
    "*/third_party/*",
    "*/third-party/*",
    "*/thirdparty/*",
    "*/vendor/*",
    "*/vendored/*",
)


def is_signable(path: Path, head: bytes | None = None) -> bool:
    """Whether ``path`` is a file Authenticode can sign (by extension or by content)."""
    if path.suffix.lower() in SIGNABLE_EXTENSIONS:
        return True
    if head is None:
        with path.open("rb") as handle:
            head = handle.read(4096)
    if head.startswith(_MSI_MAGIC):
        return True
    if head.startswith(b"MZ") and len(head) >= 0x40:
        offset = int.from_bytes(head[0x3C:0x40], "little")
        return head[offset : offset + 4] == b"PE\0\0"
    return False


@dataclass(frozen=True)
class ExclusionList:
    """Glob patterns deciding which files are left unsigned (see the module docstring)."""

    patterns: tuple[str, ...] = DEFAULT_EXCLUDES

    @classmethod
    def parse(cls, text: str, *, defaults: bool = True) -> ExclusionList:
        """Patterns from ``text`` (one per line, ``#`` comments), after the defaults if asked."""
        lines = []
        for raw in text.splitlines():
            line = raw.split("#", 1)[0].strip()
            if line:
                lines.append(line.replace("\\", "/").removeprefix("./"))
        return cls((*(DEFAULT_EXCLUDES if defaults else ()), *lines))

    @classmethod
    def load(cls, path: Path | None, *, defaults: bool = True) -> ExclusionList:
        """Read an exclusion file; ``None`` gives the defaults (or nothing)."""
        if path is None:
            return cls(DEFAULT_EXCLUDES if defaults else ())
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise InvalidInput(
                str(path), f"cannot read the exclusion file ({reason}); pass a readable file"
            ) from exc
        return cls.parse(text, defaults=defaults)

    def match(self, relpath: str) -> str | None:
        """The first pattern matching ``relpath`` (``/``-separated), or None."""
        name = relpath.rsplit("/", 1)[-1]
        for pattern in self.patterns:
            if pattern.endswith("/"):
                if relpath.startswith(pattern) or fnmatch.fnmatchcase(relpath, pattern + "*"):
                    return pattern
            elif "/" in pattern:
                if fnmatch.fnmatchcase(relpath, pattern):
                    return pattern
            elif fnmatch.fnmatchcase(name, pattern):
                return pattern
        return None


def walk_files(root: Path, *, skip: Iterable[str] = ()) -> Iterator[tuple[str, Path]]:
    """Yield ``(relpath, path)`` for every regular file under ``root``, sorted by relpath.

    Links and special files are refused (they cannot be packaged faithfully): the error names
    the path. ``skip`` holds relpaths to leave out (the catalog's own files).
    """
    skipped = set(skip)
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        base = Path(dirpath)
        for name in (*dirnames, *filenames):
            path = base / name
            if path.is_symlink():
                raise InvalidInput(
                    str(path), "symbolic links cannot be packaged; replace it by the file"
                )
        for name in filenames:
            path = base / name
            if not path.is_file():
                raise InvalidInput(str(path), "not a regular file; remove it from the tree")
            rel = path.relative_to(root).as_posix()
            if rel not in skipped:
                found.append((rel, path))
    found.sort()
    yield from found

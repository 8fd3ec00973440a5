"""Policy bundles: a directory of ``*.rego`` files and an optional ``data.json``.

Reading a bundle (:func:`read_bundle`) only gathers its text and a revision hash; compiling it
is :mod:`._engine`'s job. Files and directories whose names start with a dot are skipped, so
editors' and atomic writers' temporary files never take part.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from stockade.core.errors import PolicyError

__all__ = ["DEFAULT_BUNDLE_DIR", "Bundle", "PolicySource", "read_bundle"]

#: The bundle shipped with Stockade.
DEFAULT_BUNDLE_DIR = Path(__file__).parent / "policies"
DATA_FILE = "data.json"


@dataclass(frozen=True, slots=True)
class PolicySource:
    """One ``.rego`` file: ``path`` as shown in errors (``bundle_dir/rel``) and its text."""

    path: str
    text: str


@dataclass(frozen=True, slots=True)
class Bundle:
    """An immutable snapshot of a bundle's files; ``revision`` hashes names and contents."""

    root: Path
    sources: tuple[PolicySource, ...]
    data: str | None
    revision: str


def _visible(path: Path, root: Path) -> bool:
    return not any(part.startswith(".") for part in path.relative_to(root).parts)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError(f"not UTF-8 text ({exc.reason})", location=str(path)) from None
    except OSError as exc:
        raise PolicyError(f"cannot read: {exc.strerror}", location=str(path)) from None


def read_bundle(root: Path) -> Bundle:
    """Read every visible ``*.rego`` under ``root`` (recursively) and ``root/data.json``.

    Raises :class:`~stockade.core.errors.PolicyError` when the directory is missing, holds no
    policy, or ``data.json`` is not a JSON object (with ``file:line``).
    """
    if not root.is_dir():
        raise PolicyError(f"policy bundle {root} is not a directory")
    try:
        paths = sorted(p for p in root.rglob("*.rego") if _visible(p, root) and p.is_file())
    except OSError as exc:
        raise PolicyError(f"cannot list policy bundle {root}: {exc.strerror}") from None
    digest = hashlib.sha256()
    sources = []
    for path in paths:
        text = _read_text(path)
        sources.append(PolicySource(str(path), text))
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + text.encode() + b"\0")
    if not sources:
        raise PolicyError(f"policy bundle {root} has no .rego files")
    data_path = root / DATA_FILE
    data = None
    if data_path.is_file():
        data = _read_text(data_path)
        try:
            parsed = json.loads(data)
        except json.JSONDecodeError as exc:
            raise PolicyError(exc.msg, location=f"{data_path}:{exc.lineno}") from None
        if not isinstance(parsed, dict):
            raise PolicyError("must hold a JSON object", location=f"{data_path}:1")
        digest.update(DATA_FILE.encode() + b"\0" + data.encode())
    return Bundle(root=root, sources=tuple(sources), data=data, revision=digest.hexdigest())

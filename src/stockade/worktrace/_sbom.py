"""An image's file list from its CycloneDX SBOM, for ``not_in_image`` rules.

syft writes each file of an image as a component of ``type: file`` whose ``name`` is the path,
and records where a package's files lie in ``syft:location:N:path`` properties; both are read.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from stockade.core.errors import InvalidInput

__all__ = ["image_files", "load_sbom", "sbom_files"]

_MAX_COMPONENTS = 1_000_000


def _walk(components: Any, out: set[str], budget: list[int]) -> None:
    if not isinstance(components, list):
        return
    for component in components:
        budget[0] -= 1
        if budget[0] < 0 or not isinstance(component, Mapping):
            return
        name = component.get("name")
        if component.get("type") == "file" and isinstance(name, str) and name.startswith("/"):
            out.add(name)
        properties = component.get("properties")
        if isinstance(properties, list):
            for prop in properties:
                if not isinstance(prop, Mapping):
                    continue
                key, value = prop.get("name"), prop.get("value")
                if (
                    isinstance(key, str)
                    and key.endswith(":path")
                    and isinstance(value, str)
                    and value.startswith("/")
                ):
                    out.add(value)
        _walk(component.get("components"), out, budget)


def sbom_files(doc: Mapping[str, Any]) -> frozenset[str]:
    """The absolute paths a CycloneDX JSON document lists (files and package locations)."""
    if doc.get("bomFormat") != "CycloneDX":
        raise InvalidInput("sbom", "not a CycloneDX document (bomFormat)")
    out: set[str] = set()
    _walk(doc.get("components"), out, [_MAX_COMPONENTS])
    return frozenset(out)


def load_sbom(path: Path) -> frozenset[str]:
    """:func:`sbom_files` of a CycloneDX JSON file; errors name the file."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InvalidInput(str(path), f"cannot read: {exc.strerror}") from None
    except ValueError as exc:
        raise InvalidInput(str(path), f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidInput(str(path), "not a CycloneDX document")
    try:
        return sbom_files(doc)
    except InvalidInput as exc:
        raise InvalidInput(str(path), exc.problem) from None


def image_files(pairs: Iterable[str]) -> dict[str, frozenset[str]]:
    """``IMAGE=SBOM_FILE`` arguments as the engine's ``image_files`` map."""
    out: dict[str, frozenset[str]] = {}
    for pair in pairs:
        image, sep, file = pair.rpartition("=")
        if not sep or not image or not file:
            raise InvalidInput("--sbom", f"{pair!r} is not IMAGE=SBOM_FILE")
        out[image] = load_sbom(Path(file))
    return out

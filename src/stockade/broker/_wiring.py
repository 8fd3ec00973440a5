"""Wiring a workspace home so git, Docker and kubectl ask the broker: configuration, never a secret.

:func:`workspace_config` writes, idempotently:

``~/.gitconfig``
    a managed block ``[credential] helper = `` (clearing helpers from system config, such as a
    ``store`` that would write passwords to disk) then ``helper = stockade``.
``~/.docker/config.json``
    ``"credsStore": "stockade"`` (other keys kept).
``~/.kube/config``
    for each given cluster, a cluster, a context and a user ``stockade@<cluster>`` whose exec
    plugin is ``kubectl-credential-stockade --cluster <cluster>`` (JSON, which kubectl reads as
    YAML; an existing JSON kubeconfig is merged, another one is left alone).
``~/.stockade/ca.pem``
    a copy of the CA certificate that signed the broker's (public, not a secret), where the
    helpers look when ``STOCKADE_CA`` is unset.

The helpers are found through ``PATH`` (``git-credential-stockade``,
``docker-credential-stockade``, ``kubectl-credential-stockade``), so sessions need the directory
holding them (the venv's ``bin``) on their ``PATH``. With ``helper_dir``, git and kubectl get
absolute paths instead; Docker always looks ``docker-credential-stockade`` up on ``PATH``.

Sandboxed sessions that cannot run Stockade's own interpreter (a venv under ``/root``, a workspace
image without Stockade) pass ``helper_python``: three small scripts in ``~/.stockade/bin`` then run
``helpers.py`` (standard library only) with that interpreter, and git and kubectl point at them.
"""

from __future__ import annotations

import json
import os
import shlex
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stockade.core.errors import InvalidInput
from stockade.core.logging import get_logger

__all__ = [
    "EXEC_API_VERSION",
    "GIT_BLOCK_BEGIN",
    "GIT_BLOCK_END",
    "KubeCluster",
    "workspace_config",
]

_log = get_logger("stockade.broker.wiring")

EXEC_API_VERSION = "client.authentication.k8s.io/v1"
GIT_BLOCK_BEGIN = "# >>> stockade credential helper (managed) >>>"
GIT_BLOCK_END = "# <<< stockade credential helper <<<"


def _git_block(helper: str) -> str:
    return f"{GIT_BLOCK_BEGIN}\n[credential]\n\thelper =\n\thelper = {helper}\n{GIT_BLOCK_END}\n"


@dataclass(frozen=True)
class KubeCluster:
    """A Kubernetes API server a workspace may reach: its URL and, optionally, its CA file."""

    server: str
    ca_file: Path | None = None


def _write(path: Path, data: str, *, mode: int, owner: tuple[int, int] | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(data)
        if owner is not None:
            os.chown(tmp, *owner)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _mkdir(path: Path, owner: tuple[int, int] | None) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if owner is not None:
        os.chown(path, *owner)


def _gitconfig(text: str, helper: str) -> str:
    begin = text.find(GIT_BLOCK_BEGIN)
    end = text.find(GIT_BLOCK_END)
    if begin != -1 and end > begin:
        text = text[:begin] + text[end + len(GIT_BLOCK_END) :].lstrip("\n")
    if text and not text.endswith("\n"):
        text += "\n"
    return text + _git_block(helper)


def _load_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``; ``{}`` when absent; ``None`` when it is not a JSON object."""
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    if not raw.strip():
        return {}
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def _named(items: Any, name: str, value: dict[str, Any]) -> list[Any]:
    kept = [i for i in (items or []) if not (isinstance(i, dict) and i.get("name") == name)]
    return [*kept, value]


def _kubeconfig(
    doc: dict[str, Any], clusters: Mapping[str, KubeCluster], command: str
) -> dict[str, Any]:
    doc.setdefault("apiVersion", "v1")
    doc.setdefault("kind", "Config")
    for name, cluster in clusters.items():
        spec: dict[str, Any] = {"server": cluster.server}
        if cluster.ca_file is not None:
            spec["certificate-authority"] = str(cluster.ca_file)
        user = f"stockade@{name}"
        doc["clusters"] = _named(doc.get("clusters"), name, {"name": name, "cluster": spec})
        doc["users"] = _named(
            doc.get("users"),
            user,
            {
                "name": user,
                "user": {
                    "exec": {
                        "apiVersion": EXEC_API_VERSION,
                        "command": command,
                        "args": ["--cluster", name],
                        "interactiveMode": "Never",
                        "provideClusterInfo": True,
                    }
                },
            },
        )
        doc["contexts"] = _named(
            doc.get("contexts"), name, {"name": name, "context": {"cluster": name, "user": user}}
        )
    if clusters and not doc.get("current-context"):
        doc["current-context"] = next(iter(clusters))
    return doc


def _install_wrappers(bin_dir: Path, python: str, owner: tuple[int, int] | None) -> Path:
    if not python.startswith("/") or "\n" in python:
        raise InvalidInput(
            "helper_python", f"expected an absolute interpreter path, got {python!r}"
        )
    source = shlex.quote(str(Path(__file__).with_name("helpers.py").resolve()))
    _mkdir(bin_dir.parent, owner)
    _mkdir(bin_dir, owner)
    for kind in ("git", "docker", "kubectl"):
        script = f'#!/bin/sh\nexec {shlex.quote(python)} -I -S {source} {kind} "$@"\n'
        _write(bin_dir / f"{kind}-credential-stockade", script, mode=0o755, owner=owner)
    return bin_dir


def workspace_config(
    home: Path,
    api_url: str,
    ca_path: Path | None,
    *,
    clusters: Mapping[str, KubeCluster] | None = None,
    owner: tuple[int, int] | None = None,
    helper_dir: Path | None = None,
    helper_python: str | None = None,
) -> None:
    """Configure git, Docker and kubectl in ``home`` to use the Stockade credential helpers.

    ``api_url`` is the broker URL sessions get as ``STOCKADE_API`` (checked to be ``https``; it is
    not written anywhere — helpers read the environment). ``ca_path`` is the CA certificate that
    signed the broker's; ``None`` when it is publicly trusted. ``clusters`` names the Kubernetes
    clusters to add to the kubeconfig. ``owner`` (uid, gid) is given to every file and directory
    created. ``helper_dir`` makes git's helper and kubectl's exec command absolute paths in that
    directory (for sessions whose ``PATH`` lacks it). ``helper_python`` (an interpreter path such
    as ``/usr/bin/python3``) writes wrapper scripts running ``helpers.py`` with it into
    ``~/.stockade/bin`` and uses that as ``helper_dir``. Idempotent; never writes a secret.
    Raises :class:`InvalidInput` for a non-https ``api_url`` or a missing ``home``.
    """
    if not api_url.startswith("https://"):
        raise InvalidInput("api_url", f"the broker URL must be https://, got {api_url!r}")
    if not home.is_dir():
        raise InvalidInput("home", f"{home} is not a directory")
    gitconfig = home / ".gitconfig"
    try:
        current = gitconfig.read_text(encoding="utf-8")
    except FileNotFoundError:
        current = ""
    if helper_python is not None:
        helper_dir = _install_wrappers(home / ".stockade" / "bin", helper_python, owner)
    git_helper = "stockade"
    kube_command = "kubectl-credential-stockade"
    if helper_dir is not None:
        git_helper = str(helper_dir / "git-credential-stockade")
        kube_command = str(helper_dir / kube_command)
    _write(gitconfig, _gitconfig(current, git_helper), mode=0o644, owner=owner)

    docker_dir = home / ".docker"
    _mkdir(docker_dir, owner)
    docker = _load_json(docker_dir / "config.json")
    if docker is None:
        _log.warning("docker_config_not_json", path=str(docker_dir / "config.json"))
    else:
        docker["credsStore"] = "stockade"
        _write(
            docker_dir / "config.json", json.dumps(docker, indent=2) + "\n", mode=0o600, owner=owner
        )

    if clusters:
        kube_dir = home / ".kube"
        _mkdir(kube_dir, owner)
        kube = _load_json(kube_dir / "config")
        if kube is None:
            _log.warning("kubeconfig_not_json", path=str(kube_dir / "config"))
        else:
            text = json.dumps(_kubeconfig(kube, clusters, kube_command), indent=2) + "\n"
            _write(kube_dir / "config", text, mode=0o600, owner=owner)

    if ca_path is not None:
        stockade_dir = home / ".stockade"
        _mkdir(stockade_dir, owner)
        _write(
            stockade_dir / "ca.pem",
            ca_path.read_text(encoding="ascii"),
            mode=0o644,
            owner=owner,
        )

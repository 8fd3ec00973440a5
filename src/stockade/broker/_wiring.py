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
    YAML; an existing JSON kubeconfig is merged, another one is left alone). The cluster's CA is
    embedded (``certificate-authority-data``), so a sandbox need not see the host's file.
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

The home belongs to the session's user while this runs as root before each session, so nothing
under it is trusted: every file and directory is opened relative to a directory descriptor with
``O_NOFOLLOW``, files are replaced by rename (which replaces a symlink, never its target), and an
entry that is a symlink, of the wrong type or larger than :data:`MAX_CONFIG_BYTES` is left alone
with a warning — the user loses the helper configuration, nothing outside the home is touched.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import json
import os
import secrets
import shlex
import stat
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stockade.core.errors import InvalidInput
from stockade.core.logging import get_logger
from stockade.helpers import HELPER_NAMES, STATIC_HELPER, fallback_source

__all__ = [
    "EXEC_API_VERSION",
    "GIT_BLOCK_BEGIN",
    "GIT_BLOCK_END",
    "MAX_CONFIG_BYTES",
    "KubeCluster",
    "workspace_config",
]

_log = get_logger("stockade.broker.wiring")

EXEC_API_VERSION = "client.authentication.k8s.io/v1"
GIT_BLOCK_BEGIN = "# >>> stockade credential helper (managed) >>>"
GIT_BLOCK_END = "# <<< stockade credential helper <<<"
#: Larger existing configuration files are left alone.
MAX_CONFIG_BYTES = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_Owner = tuple[int, int] | None


class _Unsafe(Exception):
    """An entry of the home is a symlink, of the wrong type or too large: left alone."""


def _git_block(helper: str) -> str:
    return f"{GIT_BLOCK_BEGIN}\n[credential]\n\thelper =\n\thelper = {helper}\n{GIT_BLOCK_END}\n"


@dataclass(frozen=True)
class KubeCluster:
    """A Kubernetes API server a workspace may reach: its URL and, optionally, its CA file."""

    server: str
    ca_file: Path | None = None


@contextlib.contextmanager
def _opendir(
    name: str | Path, *, parent: int | None = None, owner: _Owner = None, create: bool = False
) -> Iterator[int]:
    """A descriptor of directory ``name`` (relative to ``parent``), never through a symlink."""
    created = False
    if create:
        try:
            os.mkdir(name, 0o700, dir_fd=parent)
            created = True
        except FileExistsError:
            pass
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise _Unsafe(f"{name} is not a directory (a symlink?)") from exc
        raise
    try:
        if created and owner is not None:
            os.fchown(fd, *owner)
        yield fd
    finally:
        os.close(fd)


def _read(dir_fd: int, name: str) -> str | None:
    """The text of regular file ``name`` in ``dir_fd``; ``None`` when it does not exist."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _Unsafe(f"{name} cannot be opened safely ({exc.strerror})") from exc
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise _Unsafe(f"{name} is not a regular file")
        data = handle.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise _Unsafe(f"{name} is larger than {MAX_CONFIG_BYTES} bytes")
    return data.decode("utf-8", "surrogateescape")


def _write(dir_fd: int, name: str, text: str, *, mode: int, owner: _Owner) -> None:
    """Replace ``name`` in ``dir_fd`` with ``text`` atomically (a symlink there is replaced)."""
    _write_bytes(dir_fd, name, text.encode("utf-8", "surrogateescape"), mode=mode, owner=owner)


def _write_bytes(dir_fd: int, name: str, data: bytes, *, mode: int, owner: _Owner) -> None:
    """Replace ``name`` in ``dir_fd`` with ``data`` atomically (a symlink there is replaced)."""
    tmp = f".{name}.{secrets.token_hex(6)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tmp, flags, mode, dir_fd=dir_fd)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            os.fchmod(handle.fileno(), mode)
            if owner is not None:
                os.fchown(handle.fileno(), *owner)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dir_fd)
        if isinstance(exc, IsADirectoryError | NotADirectoryError):
            raise _Unsafe(f"{name} is a directory") from exc
        raise


def _load_json(text: str | None) -> dict[str, Any] | None:
    """The JSON object in ``text``; ``{}`` when absent or empty; ``None`` when not an object."""
    if text is None or not text.strip():
        return {}
    try:
        doc = json.loads(text)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def _step(what: str, home: Path, action: Callable[[], None]) -> None:
    """Run one part of the wiring; an unsafe entry skips that part with a warning."""
    try:
        action()
    except _Unsafe as exc:
        _log.warning("workspace_config_skipped", part=what, home=str(home), reason=str(exc))


def _gitconfig(text: str, helper: str) -> str:
    begin = text.find(GIT_BLOCK_BEGIN)
    end = text.find(GIT_BLOCK_END)
    if begin != -1 and end > begin:
        text = text[:begin] + text[end + len(GIT_BLOCK_END) :].lstrip("\n")
    if text and not text.endswith("\n"):
        text += "\n"
    return text + _git_block(helper)


def _named(items: Any, name: str, value: dict[str, Any]) -> list[Any]:
    kept = [i for i in (items or []) if not (isinstance(i, dict) and i.get("name") == name)]
    return [*kept, value]


def _ca_data(clusters: Mapping[str, KubeCluster]) -> dict[str, str]:
    """Each cluster's CA bundle, base64 for ``certificate-authority-data``: read here (as the
    host, before the session starts) so a sandbox that cannot see the file still trusts it."""
    out: dict[str, str] = {}
    for name, cluster in clusters.items():
        if cluster.ca_file is None:
            continue
        try:
            data = cluster.ca_file.read_bytes()
        except OSError as exc:
            raise _Unsafe(
                f"cluster {name}: cannot read {cluster.ca_file} ({exc.strerror})"
            ) from None
        if b"-----BEGIN CERTIFICATE-----" not in data or len(data) > MAX_CONFIG_BYTES:
            raise _Unsafe(f"cluster {name}: {cluster.ca_file} is not a PEM CA bundle")
        out[name] = base64.b64encode(data).decode("ascii")
    return out


def _kubeconfig(
    doc: dict[str, Any],
    clusters: Mapping[str, KubeCluster],
    command: str,
    ca_data: Mapping[str, str],
) -> dict[str, Any]:
    doc.setdefault("apiVersion", "v1")
    doc.setdefault("kind", "Config")
    for name, cluster in clusters.items():
        spec: dict[str, Any] = {"server": cluster.server}
        if name in ca_data:
            spec["certificate-authority-data"] = ca_data[name]
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


#: Name of the copy of the Python fallback helpers in ``~/.stockade/bin``.
HELPERS_COPY = "stockade_credential_helpers.py"


def _install_wrappers(root: int, home: Path, python: str, owner: _Owner) -> None:
    """``.stockade/bin/<kind>-credential-stockade`` scripts running a copy of helpers.py (standard
    library only) with ``python``. The copy lives in the home because a sandbox may show
    nothing else of this host's files (bubblewrap gives sessions a private /tmp, for one)."""
    helpers = fallback_source().read_text(encoding="utf-8")
    source = shlex.quote(str(home / ".stockade" / "bin" / HELPERS_COPY))
    with (
        _opendir(".stockade", parent=root, owner=owner, create=True) as state,
        _opendir("bin", parent=state, owner=owner, create=True) as bin_dir,
    ):
        _write(bin_dir, HELPERS_COPY, helpers, mode=0o644, owner=owner)
        for kind in ("git", "docker", "kubectl"):
            script = f'#!/bin/sh\nexec {shlex.quote(python)} -I -S {source} {kind} "$@"\n'
            _write(bin_dir, f"{kind}-credential-stockade", script, mode=0o755, owner=owner)


def _install_static(root: int, binary: Path, owner: _Owner) -> None:
    """``.stockade/bin/stockade-credential-helper`` (a copy of the static helper) and the three
    helper names as symlinks to it: it picks its role from the name it is called by."""
    data = binary.read_bytes()
    with (
        _opendir(".stockade", parent=root, owner=owner, create=True) as state,
        _opendir("bin", parent=state, owner=owner, create=True) as bin_dir,
    ):
        _write_bytes(bin_dir, STATIC_HELPER, data, mode=0o755, owner=owner)
        for name in HELPER_NAMES:
            tmp = f".{name}.{secrets.token_hex(6)}.tmp"
            os.symlink(STATIC_HELPER, tmp, dir_fd=bin_dir)
            try:
                if owner is not None:
                    os.chown(tmp, *owner, dir_fd=bin_dir, follow_symlinks=False)
                os.replace(tmp, name, src_dir_fd=bin_dir, dst_dir_fd=bin_dir)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp, dir_fd=bin_dir)
                raise


def workspace_config(
    home: Path,
    api_url: str,
    ca_path: Path | None,
    *,
    clusters: Mapping[str, KubeCluster] | None = None,
    owner: tuple[int, int] | None = None,
    helper_dir: Path | None = None,
    helper_python: str | None = None,
    helper_binary: Path | None = None,
) -> None:
    """Configure git, Docker and kubectl in ``home`` to use the Stockade credential helpers.

    ``api_url`` is the broker URL sessions get as ``STOCKADE_API`` (checked to be ``https``; it is
    not written anywhere — helpers read the environment). ``ca_path`` is the CA certificate that
    signed the broker's; ``None`` when it is publicly trusted. ``clusters`` names the Kubernetes
    clusters to add to the kubeconfig. ``owner`` (uid, gid) is given to every file and directory
    created. ``helper_dir`` makes git's helper and kubectl's exec command absolute paths in that
    directory (for sessions whose ``PATH`` lacks it). ``helper_python`` (an interpreter path such
    as ``/usr/bin/python3``) writes wrapper scripts running ``helpers.py`` with it into
    ``~/.stockade/bin`` and uses that as ``helper_dir``. ``helper_binary`` (the static helper,
    :func:`stockade.helpers.static_helper`) is copied there instead, with the three helper names
    linked to it: it needs nothing from the workspace image and talks to the session's unix
    socket (``STOCKADE_CREDENTIAL_SOCKET``). Idempotent; never writes a secret.
    Raises :class:`InvalidInput` for a non-https ``api_url`` or a missing ``home``.
    """
    if not api_url.startswith("https://"):
        raise InvalidInput("api_url", f"the broker URL must be https://, got {api_url!r}")
    if helper_python is not None and (not helper_python.startswith("/") or "\n" in helper_python):
        raise InvalidInput(
            "helper_python", f"expected an absolute interpreter path, got {helper_python!r}"
        )
    ca_text = ca_path.read_text(encoding="ascii") if ca_path is not None else None
    try:
        root = os.open(home, _DIR_FLAGS)
    except OSError as exc:
        raise InvalidInput("home", f"{home} is not a directory") from exc
    try:
        git_helper = "stockade"
        kube_command = "kubectl-credential-stockade"
        if helper_binary is not None:
            helper_dir = home / ".stockade" / "bin"
            _step("helpers", home, lambda: _install_static(root, helper_binary, owner))
        elif helper_python is not None:
            helper_dir = home / ".stockade" / "bin"
            _step("helpers", home, lambda: _install_wrappers(root, home, helper_python, owner))
        if helper_dir is not None:
            git_helper = str(helper_dir / "git-credential-stockade")
            kube_command = str(helper_dir / kube_command)

        def git() -> None:
            current = _read(root, ".gitconfig") or ""
            _write(root, ".gitconfig", _gitconfig(current, git_helper), mode=0o644, owner=owner)

        def docker() -> None:
            with _opendir(".docker", parent=root, owner=owner, create=True) as folder:
                doc = _load_json(_read(folder, "config.json"))
                if doc is None:
                    raise _Unsafe("config.json is not a JSON object")
                doc["credsStore"] = "stockade"
                text = json.dumps(doc, indent=2) + "\n"
                _write(folder, "config.json", text, mode=0o600, owner=owner)

        def kube(clusters: Mapping[str, KubeCluster]) -> None:
            with _opendir(".kube", parent=root, owner=owner, create=True) as folder:
                doc = _load_json(_read(folder, "config"))
                if doc is None:
                    raise _Unsafe("config is not JSON (a YAML kubeconfig is left alone)")
                cas = _ca_data(clusters)  # unreadable: this part is skipped, with a warning
                text = json.dumps(_kubeconfig(doc, clusters, kube_command, cas), indent=2) + "\n"
                _write(folder, "config", text, mode=0o600, owner=owner)

        def ca(text: str) -> None:
            with _opendir(".stockade", parent=root, owner=owner, create=True) as folder:
                _write(folder, "ca.pem", text, mode=0o644, owner=owner)

        _step("git", home, git)
        _step("docker", home, docker)
        if clusters:
            _step("kubectl", home, lambda: kube(clusters))
        if ca_text is not None:
            _step("ca", home, lambda: ca(ca_text))
    finally:
        os.close(root)

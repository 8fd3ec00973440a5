"""The Podman runtime: a workspace is the rendered Pod, run by rootful Podman on this host.

Podman runs with its own ``--root``/``--runroot`` in the data dir, ``runc``, ``vfs`` storage,
``cgroupfs`` and no events log, and ``default_ulimits`` from a private ``CONTAINERS_CONF`` (the
hard limits here are below Podman's defaults). The Pod is the one :func:`render_workspace`
returns and :func:`check_object` passed at the blueprint's level; :func:`translate_for_podman`
adapts it where ``podman kube play`` 4.3 falls short, and says so field by field:

- every ``emptyDir`` and claim becomes a filesystem of its size that Stockade mounts on the
  host and Podman bind-mounts (``kube play`` mounts an ``emptyDir`` root-owned 0755 and
  enforces no size; see :mod:`._volumes`): ``/tmp`` is 1777, the home is the workspace uid's,
  0700; claims are ext4 images persisting under ``homes/`` in the data dir, unmounted when the
  Pod stops; emptyDirs are removed with the Pod;
- the workspace container's main process is the Stockade agent (``agent/stockade-agent.c``,
  built once, static), mounted read-only with its socket directory at ``/run/stockade``;
- ``/etc/passwd`` and ``/etc/group`` are generated (read-only) so each user's name resolves.
- ``RuntimeDefault`` seccomp is Podman's default profile tightened to what Kubernetes' is
  without ``CAP_SYS_ADMIN`` (:func:`workspace_seccomp`: no new namespaces, mounts or keyrings),
  through ``seccomp_profile`` in the private ``containers.conf``.

Sessions enter through the agent, not ``podman exec``: the runtime hands it the session's PTY or
pipes over a ``SOCK_SEQPACKET`` socket and it forks the program, which inherits the container's
namespaces, uid, empty capability set, ``no_new_privs`` and seccomp filter. Only the container's
own main process may be the agent: the peer's pid is checked against Podman's record.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import fcntl
import hashlib
import json
import os
import pty
import re
import shutil
import signal
import socket
import struct
import subprocess
import termios
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from stockade.core.errors import BackendError, InvalidInput, PermissionDenied, ToolMissing
from stockade.core.logging import get_logger

from ._blueprint import DEFAULT_BLUEPRINT, Blueprint
from ._fdio import FdReader, FdWriter
from ._home import home_digest
from ._names import object_name
from ._nsenter import connect_in_netns
from ._pss import check_object
from ._render import render_workspace
from ._runtime import ExitStatus, SessionSpec, shared_session, without_credentials
from ._uids import UidAllocator
from ._volumes import (
    HostVolume,
    parse_quantity,
    prepare_claim,
    prepare_empty_dir,
    require_volume_tools,
    unmount_below,
)

__all__ = [
    "PodmanRuntime",
    "PodmanWorkload",
    "build_agent",
    "build_busybox_image",
    "copy_with_libraries",
    "translate_for_podman",
]

_log = get_logger("stockade.workspace.podman")
AGENT_MOUNT = "/run/stockade"
HELPER_DIR = f"{AGENT_MOUNT}/bin"
#: The names git, Docker and kubectl call the static credential helper by.
HELPER_NAMES = (
    "git-credential-stockade",
    "docker-credential-stockade",
    "kubectl-credential-stockade",
)
_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin"
_USER_NAME = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")
_SIGNALS = {
    name.removeprefix("SIG"): int(getattr(signal, name))
    for name in ("SIGINT", "SIGTERM", "SIGKILL", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")
}
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
seccomp_profile = "{seccomp}"
[engine]
events_logger = "none"
runtime = "runc"
cgroup_manager = "cgroupfs"
"""


def build_agent(dest_dir: Path) -> Path:
    """The static agent binary for this source, compiled once into ``dest_dir`` (gcc, static
    glibc); cached by the source's hash."""
    source = resources.files("stockade.workspace").joinpath("agent/stockade-agent.c").read_bytes()
    digest = hashlib.sha256(source).hexdigest()[:16]
    binary = dest_dir / f"stockade-agent-{digest}"
    if binary.is_file():
        return binary
    gcc = shutil.which("gcc")
    if gcc is None:
        raise ToolMissing("gcc", "gcc")
    dest_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
    src = dest_dir / f"stockade-agent-{digest}.c"
    src.write_bytes(source)
    tmp = binary.with_suffix(".tmp")
    done = subprocess.run(
        [gcc, "-static", "-O2", "-o", str(tmp), str(src)], capture_output=True, check=False
    )
    if done.returncode != 0:
        raise BackendError(f"building the workspace agent failed: {done.stderr.decode()[-400:]}")
    tmp.chmod(0o755)
    tmp.replace(binary)
    return binary


def _install_helper(bin_dir: Path, helper: Path) -> None:
    """The static helper in ``bin_dir`` (world-readable, root-owned), linked under each name."""
    bin_dir.mkdir(exist_ok=True)
    bin_dir.chmod(0o755)
    target = bin_dir / "stockade-credential-helper"
    if not target.is_file() or target.read_bytes() != helper.read_bytes():
        tmp = target.with_suffix(".tmp")
        shutil.copyfile(helper, tmp)
        tmp.chmod(0o755)
        tmp.replace(target)
    for name in HELPER_NAMES:
        link = bin_dir / name
        if not link.is_symlink():
            link.symlink_to(target.name)


def _home_of(pod: Mapping[str, Any]) -> str:
    for item in pod["spec"]["containers"][0].get("env", []):
        if item.get("name") == "HOME":
            return str(item["value"])
    return "/home/workspace"


@dataclass(frozen=True, slots=True)
class PodmanLayout:
    """Where one workspace's host-side files live."""

    runtime: Path
    """Per-Pod directory (removed with the Pod): ``pub`` (mounted at /run/stockade), ``etc``,
    ``volumes``."""
    homes: Path
    """Persistent claims of this workspace."""

    @property
    def pub(self) -> Path:
        return self.runtime / "pub"

    @property
    def socket(self) -> Path:
        return self.pub / "agent.sock"


#: The bound of an emptyDir that has no ``sizeLimit`` (the renderer gives each one; a patch
#: might add one without): under Podman nothing is unbounded.
UNSIZED_EMPTY_DIR_LIMIT = "1Gi"


def translate_for_podman(
    pod: Mapping[str, Any],
    *,
    layout: PodmanLayout,
    claims: Sequence[Mapping[str, Any]] = (),
) -> tuple[dict[str, Any], dict[str, HostVolume]]:
    """The Pod ``podman kube play`` 4.3 runs, and the sized volumes to prepare for it (volume
    name -> :class:`HostVolume`; sizes from ``claims``, the rendered PVCs in ``storages``
    order, and from each emptyDir's ``sizeLimit``). Pure."""
    translated = copy.deepcopy(dict(pod))
    spec = translated["spec"]
    home = _home_of(pod)
    sizes = {
        str(claim["metadata"]["name"]): (
            str(claim["spec"]["resources"]["requests"]["storage"]),
            f"storages[{index}].size",
        )
        for index, claim in enumerate(claims)
    }
    dirs: dict[str, HostVolume] = {}
    new_volumes = []
    for index, volume in enumerate(spec.get("volumes", [])):
        name = volume["name"]
        if "persistentVolumeClaim" in volume:
            claim = str(volume["persistentVolumeClaim"]["claimName"])
            if claim not in sizes:
                raise InvalidInput(f"spec.volumes[{index}]", f"claim {claim!r} has no size")
            quantity, where = sizes[claim]
            path, kind = layout.homes / claim, "claim"
        elif "emptyDir" in volume:
            empty = volume["emptyDir"] or {}
            quantity = str(empty.get("sizeLimit", UNSIZED_EMPTY_DIR_LIMIT))
            where = f"spec.volumes[{index}].emptyDir.sizeLimit"
            path = layout.runtime / "volumes" / name
            kind = "memory" if empty.get("medium") == "Memory" else "emptyDir"
        else:
            raise InvalidInput(f"spec.volumes[{index}]", "only claims and emptyDirs run here")
        mounted_at = [
            m["mountPath"]
            for c in spec["containers"]
            for m in c.get("volumeMounts", [])
            if m["name"] == name
        ]
        tmp = "/tmp" in mounted_at  # noqa: S108 - the container's /tmp
        mode = 0o1777 if tmp else (0o700 if home in mounted_at else 0o755)
        dirs[name] = HostVolume(
            path=path, mode=mode, size=parse_quantity(quantity, where), field=where, kind=kind
        )
        new_volumes.append({"name": name, "hostPath": {"path": str(path), "type": "Directory"}})
    etc = layout.runtime / "etc"
    new_volumes += [
        {"name": "stockade-runtime", "hostPath": {"path": str(layout.pub), "type": "Directory"}},
        {"name": "stockade-passwd", "hostPath": {"path": str(etc / "passwd"), "type": "File"}},
        {"name": "stockade-group", "hostPath": {"path": str(etc / "group"), "type": "File"}},
    ]
    spec["volumes"] = new_volumes
    main = spec["containers"][0]
    main["command"] = [f"{AGENT_MOUNT}/agent", f"{AGENT_MOUNT}/agent.sock"]
    main.pop("args", None)
    main["volumeMounts"] = [
        *main.get("volumeMounts", []),
        {"name": "stockade-runtime", "mountPath": AGENT_MOUNT, "readOnly": True},
        {"name": "stockade-passwd", "mountPath": "/etc/passwd", "readOnly": True},
        {"name": "stockade-group", "mountPath": "/etc/group", "readOnly": True},
    ]
    # Podman has no user namespaces per Pod here and no sidecar image offline.
    spec.pop("hostUsers", None)
    spec["containers"] = [main]
    translated["metadata"].pop("namespace", None)
    return translated, dirs


def copy_with_libraries(program: Path, rootfs: Path) -> None:
    """``program`` and every shared library ``ldd`` names for it, copied to the same paths
    under ``rootfs`` (symlinks resolved), world-readable and executable."""
    if not program.is_absolute() or not program.is_file():
        raise InvalidInput("program", f"{program} is not an absolute path to a file")
    done = subprocess.run(["ldd", str(program)], capture_output=True, text=True, check=False)
    files = [program]
    for line in done.stdout.splitlines() if done.returncode == 0 else []:
        parts = line.split()
        path = parts[2] if "=>" in parts and len(parts) > 3 else (parts[0] if parts else "")
        if path.startswith("/"):
            files.append(Path(path))
    for item in files:
        dest = rootfs / item.relative_to("/")
        for parent in reversed(dest.relative_to(rootfs).parents[:-1]):
            (rootfs / parent).mkdir(exist_ok=True)
            (rootfs / parent).chmod(0o755)
        shutil.copy(item, dest)
        dest.chmod(0o755)


def build_busybox_image(
    podman: Podman,
    rootfs: Path,
    tag: str,
    *,
    extra: Mapping[str, Path] | None = None,
    programs: Sequence[Path] = (),
) -> None:
    """Build ``tag`` from busybox-static: a root filesystem of ``/bin/busybox`` and its applets
    (plus ``extra`` programs, name -> file, into ``/bin``, and ``programs`` of this host with
    their shared libraries at their own paths), imported (no registry involved)."""
    busybox = shutil.which("busybox")
    if busybox is None:
        raise ToolMissing("busybox", "busybox-static")
    rootfs.mkdir(parents=True, exist_ok=True)
    for program in programs:
        copy_with_libraries(program, rootfs)
    rootfs.chmod(0o755)  # modes set explicitly: a process umask (stockade up's is 077) must not
    for sub in ("bin", "etc", "tmp", "proc", "dev", "sys", "home", "run", "root"):  # leak in
        (rootfs / sub).mkdir(parents=True, exist_ok=True)
        (rootfs / sub).chmod(0o700 if sub == "root" else 0o755)
    shutil.copy2(busybox, rootfs / "bin" / "busybox")
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True)
    for applet in applets.stdout.split():
        link = rootfs / "bin" / applet
        if applet != "busybox" and not link.exists():
            link.symlink_to("busybox")
    for name, source in (extra or {}).items():
        shutil.copy2(source, rootfs / "bin" / name)
    (rootfs / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (rootfs / "etc" / "group").write_text("root:x:0:\n")
    for item in [*(rootfs / "bin").iterdir(), rootfs / "etc" / "passwd", rootfs / "etc" / "group"]:
        if not item.is_symlink():
            item.chmod(0o755 if item.parent.name == "bin" else 0o644)
    (rootfs / "tmp").chmod(0o1777)
    tar = rootfs.with_suffix(".tar")
    subprocess.run(["tar", "-C", str(rootfs), "-cf", str(tar), "."], check=True)
    podman.run_sync("import", "-q", str(tar), tag)
    tar.unlink()


SYSTEM_SECCOMP = Path("/usr/share/containers/seccomp.json")
#: Namespace flags of ``clone``: CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET.
_CLONE_NS_FLAGS = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000
_CLONE_NS_FLAGS |= 0x40000000
#: Refused outright: new namespaces (and entering them), mounts, the kernel keyring.
_SECCOMP_DENIED = frozenset(
    {"unshare", "setns", "mount", "umount", "umount2", "pivot_root", "keyctl", "add_key",
     "request_key", "clone3", "open_tree", "move_mount", "fsopen", "fsmount", "fsconfig",
     "fspick", "mount_setattr"}
)  # fmt: skip


def workspace_seccomp(base: Mapping[str, Any]) -> dict[str, Any]:
    """Podman's default seccomp profile (``base``) made what Kubernetes' ``RuntimeDefault``
    is for a container without ``CAP_SYS_ADMIN``: Podman's allows ``unshare``, ``clone`` with
    namespace flags, ``mount`` and ``keyctl`` to everyone, so a workspace session could create
    user namespaces (root there, mounts, a wide kernel surface) and pid namespaces (where any
    pid can be had). Those are refused (``EPERM``; ``clone3`` ``ENOSYS``, so libc falls back to
    ``clone``, which is allowed without namespace flags only). Pure."""
    profile = copy.deepcopy(dict(base))
    rules = []
    for rule in profile.get("syscalls", []):
        if rule.get("action") == "SCMP_ACT_ALLOW":
            names = [n for n in rule.get("names", []) if n not in _SECCOMP_DENIED and n != "clone"]
            if not names:
                continue
            rule = {**rule, "names": names}
        rules.append(rule)
    rules.append({"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                  "args": [{"index": 0, "value": _CLONE_NS_FLAGS, "valueTwo": 0,
                            "op": "SCMP_CMP_MASKED_EQ"}]})  # fmt: skip
    rules.append({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38})
    rules.append({"names": sorted(_SECCOMP_DENIED - {"clone3"}), "action": "SCMP_ACT_ERRNO",
                  "errnoRet": 1})  # fmt: skip
    profile["syscalls"] = rules
    return profile


class Podman:
    """The ``podman`` command with Stockade's private storage and flags."""

    def __init__(self, data_dir: Path) -> None:
        binary = shutil.which("podman")
        if binary is None:
            raise ToolMissing("podman", "podman")
        if shutil.which("runc") is None:
            raise ToolMissing("runc", "runc")
        if shutil.which("catatonit") is None and not Path("/usr/libexec/podman/catatonit").exists():
            raise ToolMissing("catatonit", "catatonit")  # kube play's Pod infra (pause) process
        self.base = data_dir / "podman"
        self.base.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not SYSTEM_SECCOMP.is_file():
            raise ToolMissing(str(SYSTEM_SECCOMP), "golang-github-containers-common")
        seccomp = self.base / "seccomp.json"
        profile = json.dumps(workspace_seccomp(json.loads(SYSTEM_SECCOMP.read_text())), indent=1)
        if not seccomp.is_file() or seccomp.read_text() != profile:
            seccomp.write_text(profile)
        conf = self.base / "containers.conf"
        text = CONTAINERS_CONF.format(seccomp=seccomp)
        if not conf.is_file() or conf.read_text() != text:
            conf.write_text(text)
        runroot = self.base / "run"
        if len(str(runroot)) > 50:  # Podman's limit; the runroot is volatile state anyway
            digest = hashlib.sha256(str(self.base).encode()).hexdigest()[:16]
            runroot = Path("/run/stockade-podman") / digest
        self.argv = [
            binary,
            "--root", str(self.base / "root"),
            "--runroot", str(runroot),
            "--runtime", "runc",
            "--storage-driver", "vfs",
            "--cgroup-manager", "cgroupfs",
            "--events-backend", "none",
        ]  # fmt: skip
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf)}

    def run_sync(self, *args: str) -> str:
        done = subprocess.run(
            [*self.argv, *args], capture_output=True, text=True, env=self.env, check=False
        )
        if done.returncode != 0:
            raise BackendError(f"podman {args[0]} failed: {done.stderr.strip()[-400:]}")
        return done.stdout

    async def run(self, *args: str, check: bool = True) -> str:
        proc = await asyncio.create_subprocess_exec(
            *self.argv, *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=self.env,
        )  # fmt: skip
        out, err = await proc.communicate()
        if check and proc.returncode != 0:
            raise BackendError(f"podman {args[0]} failed: {err.decode().strip()[-400:]}")
        return out.decode()


class _AgentLink:
    """The host's end of one Pod's agent connection."""

    def __init__(self, sock: socket.socket, host_pid: int) -> None:
        self.sock = sock
        self.host_pid = host_pid
        self.pending: dict[int, asyncio.Future[int]] = {}
        self.exits: dict[int, asyncio.Future[int]] = {}
        self.closed = asyncio.get_running_loop().create_future()
        sock.setblocking(False)
        asyncio.get_running_loop().add_reader(sock.fileno(), self._on_readable)

    def _on_readable(self) -> None:
        try:
            data = self.sock.recv(64)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.close()
            return
        kind = data[:1]
        if len(data) < 9:
            return
        ident, value = struct.unpack("<II", data[1:9])
        if kind == b"P":
            fut = self.pending.pop(ident, None)
            if fut is not None and not fut.done():
                fut.set_result(value)
        elif kind == b"E":
            fut = self.pending.pop(ident, None)
            if fut is not None and not fut.done():
                fut.set_exception(OSError(value, os.strerror(value)))
        elif kind == b"X":
            fut = self.exits.pop(ident, None)
            if fut is not None and not fut.done():
                fut.set_result(value)

    def send(self, payload: bytes, fds: list[int]) -> None:
        self.sock.sendmsg(
            [payload], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))]
        )

    def signal(self, ident: int, number: int) -> None:
        with contextlib.suppress(OSError):
            self.sock.send(b"K" + struct.pack("<II", ident, number))

    @property
    def alive(self) -> bool:
        return not self.closed.done()

    def close(self) -> None:
        if self.closed.done():
            return
        self.closed.set_result(None)
        with contextlib.suppress(ValueError, OSError):
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self.sock.close()
        for fut in (*self.pending.values(), *self.exits.values()):
            if not fut.done():
                fut.set_exception(ConnectionError("the workspace agent went away"))


@dataclass
class _Pod:
    """A workspace Pod this runtime started or found running."""

    workspace: str
    name: str
    uid: int
    owner: str
    home: str
    layout: PodmanLayout
    listener: socket.socket
    link: _AgentLink | None = None
    linked: asyncio.Event = field(default_factory=asyncio.Event)
    sessions: set[int] = field(default_factory=set)
    users: set[str] = field(default_factory=set)
    idle_since: float = field(default_factory=time.monotonic)
    container_pid: int = 0
    netns_fd: int = -1
    """The container's network namespace, opened when its agent connected: forwards enter
    it by this handle, never by a pid that may since name another process."""


def bind_unix(sock: socket.socket, path: Path) -> None:
    """Bind ``sock`` at ``path`` even when the path is longer than ``sun_path`` allows (108
    bytes): through ``/proc/self/fd`` of the directory, which names the same place."""
    if len(str(path)) < 100:
        sock.bind(str(path))
        return
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        sock.bind(f"/proc/self/fd/{dir_fd}/{path.name}")
    finally:
        os.close(dir_fd)


def _peer_pid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[0])


def _status_fields(pid: int) -> dict[str, str]:
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def descends_from(pid: int, leader_ns_pid: int, container_pid: int) -> bool:
    """Whether host process ``pid`` is the session leader (pid ``leader_ns_pid`` in the
    container, a child of the container's main process, which forks every leader) or one of
    its descendants. The leader is told by its parent too: a session may create pid
    namespaces of its own, where any pid, the leader's included, can be had again."""
    current = pid
    for _ in range(256):
        if current <= 1 or current == container_pid:
            return False
        fields = _status_fields(current)
        nspids = fields.get("NSpid", "").split()
        try:
            parent = int(fields.get("PPid", "0"))
        except ValueError:
            return False
        if (
            len(nspids) > 1
            and nspids[-1] == str(leader_ns_pid)
            and parent == container_pid
            and container_pid > 1
        ):
            return True
        current = parent
    return False


def _short(path: str) -> str:
    """``path`` usable with ``connect``: long ones go through ``/proc/self/fd`` of a directory
    held open for the moment of the call (the kernel resolves it at connect time)."""
    if len(path) < 100:
        return path
    raise InvalidInput("socket path", f"{path!r} is longer than a unix socket path may be")


_LEADER_WAIT = 10.0
"""Seconds a connection to a session socket waits for the session leader's pid."""


class _SessionProxy:
    """A unix socket inside one session's directory that forwards to a host socket, for the
    session's own processes only (peer pid checked against the session's process tree)."""

    def __init__(self, path: Path, target: str, pod: _Pod) -> None:
        self.path = path
        self.target = target
        self.pod = pod
        self.leader: int | None = None
        self.server: asyncio.AbstractServer | None = None
        self._known = asyncio.Event()

    def set_leader(self, pid: int | None) -> None:
        """Record the session leader (``None``: the session never started). Connections that
        arrived before the agent reported the pid wait for this, then get their verdict."""
        self.leader = pid
        self._known.set()

    async def start(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        bind_unix(sock, self.path)
        self.server = await asyncio.start_unix_server(self._serve, sock=sock)
        os.chown(self.path, self.pod.uid, self.pod.uid)
        self.path.chmod(0o600)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        # The leader can run and connect before the agent's "started" reply is read here.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._known.wait(), _LEADER_WAIT)
        allowed = self.leader is not None and descends_from(
            _peer_pid(sock), self.leader, self.pod.container_pid
        )
        if not allowed:
            _log.warning("session_socket_refused", path=str(self.path))
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_unix_connection(_short(self.target))
        except OSError:
            writer.close()
            return

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                with contextlib.suppress(OSError, RuntimeError):
                    dst.write_eof()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        for w in (writer, up_writer):
            w.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _set_winsize(fd: int, columns: int, rows: int, width: int, height: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, width, height))


class PodmanWorkload:
    """One session running inside a workspace container, started by its agent."""

    def __init__(
        self,
        *,
        runtime: PodmanRuntime,
        pod: _Pod,
        ident: int,
        stdin: FdWriter,
        stdout: FdReader,
        stderr: FdReader | None,
        master: int | None,
        exited: asyncio.Future[int],
        proxies: list[_SessionProxy],
        session_dir: Path,
    ) -> None:
        self._runtime = runtime
        self._pod = pod
        self._ident = ident
        self._stdin = stdin
        self._stdout = stdout
        self._stderr = stderr
        self._master = master
        self._exited = exited
        self._proxies = proxies
        self._session_dir = session_dir
        self._status: ExitStatus | None = None
        self._closed = False
        self.pid: int | None = None
        """The session leader's pid inside the container."""

    async def read_stdout(self) -> bytes:
        return await self._stdout.read()

    async def read_stderr(self) -> bytes:
        return b"" if self._stderr is None else await self._stderr.read()

    async def write_stdin(self, data: bytes) -> None:
        await self._stdin.write(data)

    async def close_stdin(self) -> None:
        if self._master is None:
            self._stdin.close()

    def resize(self, columns: int, rows: int, width: int, height: int) -> None:
        if self._master is not None:
            _set_winsize(self._master, columns, rows, width, height)

    def signal(self, name: str) -> None:
        number = _SIGNALS.get(name)
        if number is not None and self._status is None and self._pod.link is not None:
            self._pod.link.signal(self._ident, number)

    async def wait(self) -> ExitStatus:
        if self._status is None:
            try:
                raw = await asyncio.shield(self._exited)
            except ConnectionError:
                self._status = ExitStatus(signal="KILL")
            else:
                if os.WIFSIGNALED(raw):
                    name = signal.Signals(os.WTERMSIG(raw)).name.removeprefix("SIG")
                    self._status = ExitStatus(signal=name)
                else:
                    self._status = ExitStatus(code=os.WEXITSTATUS(raw))
        return self._status

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self._exited.done():
            for number in (signal.SIGHUP, signal.SIGKILL):
                if self._pod.link is not None:
                    self._pod.link.signal(self._ident, number)
                try:
                    await asyncio.wait_for(asyncio.shield(self._exited), 2.0)
                    break
                except (TimeoutError, ConnectionError):
                    continue
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            await self.wait()
        self._stdin.close()
        self._stdout.close()
        if self._stderr is not None:
            self._stderr.close()
        for proxy in self._proxies:
            await proxy.close()
        shutil.rmtree(self._session_dir, ignore_errors=True)
        self._runtime._session_ended(self._pod, self._ident)


def _unmount_volumes(layout: PodmanLayout, *, claims: bool = True) -> None:
    """Unmount the Pod's emptyDirs and (``claims``) its claims; their loop devices go with
    their last mount. Call once the Pod is gone: a running one keeps its own mounts."""
    unmount_below(layout.runtime / "volumes")
    if claims:
        unmount_below(layout.homes)


def _remove_runtime(layout: PodmanLayout) -> None:
    """The Pod's host-side files gone, its volumes unmounted first (``rmtree`` would descend
    into a mounted filesystem; a claim's data is never under ``runtime`` anyway)."""
    _unmount_volumes(layout)
    shutil.rmtree(layout.runtime, ignore_errors=True)


class PodmanRuntime:
    """Runs each workspace as its rendered Pod under rootful Podman; sessions enter through the
    Pod's agent. Pods are reused while they run and stopped after ``idle_timeout`` seconds
    without a session (:meth:`stop_idle`)."""

    name = "container"

    def __init__(
        self,
        *,
        data_dir: Path,
        uids: UidAllocator | None = None,
        blueprints: Callable[[SessionSpec], Blueprint] | None = None,
        idle_timeout: float = 900.0,
        network: Literal["none", "bridge"] = "none",
        shell: str = "/bin/sh",
        start_timeout: float = 30.0,
        credential_helper: Path | None = None,
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.podman = Podman(self.data_dir)
        require_volume_tools()  # fail closed: no sized volumes, no Pods
        self.uids = uids or UidAllocator(self.data_dir / "workspace-uids.json")
        self.blueprints = blueprints
        self.idle_timeout = idle_timeout
        self.network = network
        self.shell = shell
        self.start_timeout = start_timeout
        self.agent = build_agent(self.podman.base / "agent")
        self.credential_helper = credential_helper
        """The static credential helper (:func:`stockade.helpers.static_helper`), mounted
        read-only at ``/run/stockade/bin`` under the names git, Docker and kubectl call."""
        self._pods: dict[str, _Pod] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._next_ident = 1

    # -- Pods -------------------------------------------------------------------------------

    def _blueprint(self, spec: SessionSpec) -> Blueprint:
        if self.blueprints is not None:
            return self.blueprints(spec)
        if spec.blueprint is not None:
            return Blueprint.model_validate(dict(spec.blueprint))
        return DEFAULT_BLUEPRINT

    def layout(self, workspace: str) -> PodmanLayout:
        digest = home_digest(workspace)
        return PodmanLayout(
            runtime=self.podman.base / "pods" / digest, homes=self.data_dir / "homes" / digest
        )

    def _holder(self, spec: SessionSpec) -> tuple[str, int]:
        """Who a Pod of ``spec.workspace`` must belong to now: its owner and uid."""
        owner = str(spec.workspace_config.get("owner", spec.username))
        uid = spec.uid if spec.uid is not None else self.uids.uid(spec.workspace)
        return owner, uid

    async def ensure(self, spec: SessionSpec) -> _Pod:
        """The running Pod of ``spec.workspace``: reused, found running, or created. A Pod
        started for another owner or uid (the workspace was removed and its name given again)
        is never reused: what its former holder left running there is removed with it."""
        lock = self._locks.setdefault(spec.workspace, asyncio.Lock())
        async with lock:
            pod = self._pods.get(spec.workspace)
            if pod is not None and pod.link is not None and pod.link.alive:
                if (pod.owner, pod.uid) == self._holder(spec):
                    return pod
                _log.warning("workspace_pod_replaced", workspace=spec.workspace,
                             reason="the workspace's owner or uid changed")  # fmt: skip
                await self.stop(spec.workspace)
                pod = None
            if pod is not None:
                await self._forget(pod)
            return await self._start(spec)

    def _holder_file(self, layout: PodmanLayout) -> Path:
        return layout.runtime / "holder.json"

    async def _start(self, spec: SessionSpec) -> _Pod:
        owner, uid = self._holder(spec)
        blueprint = self._blueprint(spec)
        rendered = render_workspace(blueprint, workspace=spec.workspace, owner=owner, uid=uid)
        violations = check_object(rendered.pod, blueprint.level)  # the gate: never create a
        if violations:  # Pod that fails its blueprint's level
            raise PermissionDenied(
                f"workspace {spec.workspace!r} refused: Pod Security {blueprint.level}",
                reasons=[str(v) for v in violations],
            )
        layout = self.layout(spec.workspace)
        name = str(rendered.pod["metadata"]["name"])
        translated, dirs = translate_for_podman(rendered.pod, layout=layout, claims=rendered.claims)
        exists = await self._pod_running(name)
        holder = json.dumps({"owner": owner, "uid": uid}, sort_keys=True)
        if exists and not self._held_by(layout, holder):
            _log.warning("workspace_pod_replaced", workspace=spec.workspace,
                         reason="the running Pod was started for another owner or uid")  # fmt: skip
            await self.podman.run("pod", "rm", "-f", "-t", "0", name, check=False)
            _remove_runtime(layout)
            exists = False
        listener = self._listen(layout, uid)
        pod = _Pod(
            workspace=spec.workspace,
            name=name,
            uid=uid,
            owner=owner,
            home=_home_of(rendered.pod),
            layout=layout,
            listener=listener,
            users={owner, spec.username},
        )
        self._write_identity(pod)
        accept = asyncio.ensure_future(self._accept(pod))
        try:
            if not exists:
                await self.podman.run("pod", "rm", "-f", "-t", "0", name, check=False)
                # sized filesystems, mounted by blocking tools: off the event loop
                await asyncio.to_thread(self._prepare_volumes, pod, dirs)
                self._holder_file(layout).write_text(holder)
                manifest = layout.runtime / "pod.yaml"
                manifest.write_text(yaml.safe_dump(translated, sort_keys=False))
                await self.podman.run(
                    "kube", "play", "--quiet", "--network", self.network, str(manifest)
                )
            await asyncio.wait_for(asyncio.shield(accept), self.start_timeout)
        except BaseException:
            accept.cancel()
            listener.close()
            if not exists:  # fail closed, and leave nothing mounted behind
                await self.podman.run("pod", "rm", "-f", "-t", "0", name, check=False)
                await asyncio.to_thread(_unmount_volumes, layout)
            raise
        self._pods[spec.workspace] = pod
        return pod

    def _held_by(self, layout: PodmanLayout, holder: str) -> bool:
        try:
            return self._holder_file(layout).read_text() == holder
        except OSError:
            return False

    async def _pod_running(self, name: str) -> bool:
        state = await self.podman.run("pod", "inspect", "--format", "{{.State}}", name, check=False)
        return state.strip() == "Running"

    def _listen(self, layout: PodmanLayout, uid: int) -> socket.socket:
        layout.pub.mkdir(parents=True, exist_ok=True)
        layout.pub.chmod(0o755)
        target = layout.pub / "agent"
        if not target.is_file() or target.stat().st_size != self.agent.stat().st_size:
            shutil.copy2(self.agent, target.with_suffix(".tmp"))
            target.with_suffix(".tmp").replace(target)
        if self.credential_helper is not None:
            _install_helper(layout.pub / "bin", self.credential_helper)
        (layout.pub / "s").mkdir(exist_ok=True, mode=0o711)
        (layout.pub / "s").chmod(0o711)  # whatever the process umask
        with contextlib.suppress(FileNotFoundError):
            layout.socket.unlink()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        bind_unix(listener, layout.socket)
        os.chown(layout.socket, uid, uid)  # the agent runs as the workspace uid
        layout.socket.chmod(0o600)
        listener.listen(8)
        listener.setblocking(False)
        return listener

    async def _container_pid(self, pod: _Pod) -> int:
        out = await self.podman.run(
            "inspect", "--format", "{{.State.Pid}}", f"{pod.name}-workspace", check=False
        )
        return int(out.strip()) if out.strip().isdigit() else 0

    async def _accept(self, pod: _Pod) -> None:
        """Accept the agent's connection; only the container's main process may be it."""
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(pod.listener)
            peer = _peer_pid(conn)
            pod.container_pid = await self._container_pid(pod)
            hello = b""
            with contextlib.suppress(OSError, TimeoutError):
                hello = await asyncio.wait_for(loop.sock_recv(conn, 16), 5.0)
            if peer != pod.container_pid or peer <= 0 or hello != b"H":
                _log.warning("agent_impostor_refused", workspace=pod.workspace, peer_pid=peer)
                conn.close()
                continue
            try:
                netns = os.open(f"/proc/{peer}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                conn.close()
                continue
            if pod.netns_fd >= 0:
                os.close(pod.netns_fd)
            pod.netns_fd = netns
            pod.link = _AgentLink(conn, peer)
            pod.linked.set()
            return

    def _prepare_volumes(self, pod: _Pod, volumes: Mapping[str, HostVolume]) -> None:
        """Each volume a filesystem of its size (:mod:`._volumes`): the claims' images made,
        migrated or found and mounted once; the emptyDirs fresh (what an earlier Pod left
        there, after a crash, unmounted and removed first)."""
        _unmount_volumes(pod.layout, claims=False)
        shutil.rmtree(pod.layout.runtime / "volumes", ignore_errors=True)
        for volume in volumes.values():
            if volume.kind == "claim":
                prepare_claim(volume, pod.uid, self.podman.base / "pristine")
            else:
                prepare_empty_dir(volume, pod.uid, self.podman.base / "pristine")

    def _write_identity(self, pod: _Pod) -> None:
        etc = pod.layout.runtime / "etc"
        etc.mkdir(parents=True, exist_ok=True)
        names = sorted(name for name in pod.users if _USER_NAME.match(name))
        if pod.owner in names:  # the owner's name first: it is what `id -un` shows
            names.remove(pod.owner)
            names.insert(0, pod.owner)
        lines = ["root:x:0:0:root:/root:/sbin/nologin"]
        lines += [f"{n}:x:{pod.uid}:{pod.uid}:{n}:{pod.home}:{self.shell}" for n in names]
        passwd = etc / "passwd"
        group = etc / "group"
        for path, text in (
            (passwd, "\n".join(lines) + "\n"),
            (group, f"root:x:0:\n{(names or ['workspace'])[0]}:x:{pod.uid}:\n"),
        ):
            # rewritten in place: the container's bind mount follows the inode
            with open(path, "a+") as handle:
                handle.seek(0)
                handle.truncate()
                handle.write(text)
            path.chmod(0o644)

    async def _forget(self, pod: _Pod) -> None:
        if pod.link is not None:
            pod.link.close()
        if pod.netns_fd >= 0:
            os.close(pod.netns_fd)
            pod.netns_fd = -1
        pod.listener.close()
        self._pods.pop(pod.workspace, None)

    async def stop(self, workspace: str) -> None:
        """Stop and remove the workspace's Pod (its claims stay)."""
        pod = self._pods.get(workspace)
        layout = self.layout(workspace)
        if pod is not None:
            await self._forget(pod)
            name = pod.name
        else:
            name = object_name(workspace)
        await self.podman.run("pod", "rm", "-f", "-t", "0", name, check=False)
        await asyncio.to_thread(_remove_runtime, layout)

    async def stop_idle(self, now: float | None = None) -> list[str]:
        """Stop every Pod without a session for ``idle_timeout`` seconds; returns their names."""
        now = time.monotonic() if now is None else now
        idle = [
            pod.workspace
            for pod in self._pods.values()
            if not pod.sessions and now - pod.idle_since >= self.idle_timeout
        ]
        for workspace in idle:
            await self.stop(workspace)
        return idle

    async def run_idle_reaper(self, interval: float = 30.0) -> None:
        """Call :meth:`stop_idle` every ``interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            await self.stop_idle()

    async def close(self) -> None:
        """Drop every agent link (the Pods keep running and are found again on restart)."""
        for pod in list(self._pods.values()):
            await self._forget(pod)

    async def open_connection_in(self, workspace: str, host: str, port: int) -> socket.socket:
        """A TCP connection to ``host:port`` leaving from the workspace's network namespace
        (its own loopback, never the gateway host's)."""
        pod = self._pods.get(workspace)
        if pod is None or pod.netns_fd < 0 or pod.link is None or not pod.link.alive:
            raise InvalidInput("workspace", f"{workspace!r} has no running Pod")
        if os.fstat(pod.netns_fd).st_ino == os.stat("/proc/self/ns/net").st_ino:
            _log.warning("forward_refused", workspace=workspace,
                         reason="the workspace shares the gateway's network namespace")  # fmt: skip
            raise PermissionDenied(
                "ssh.direct-tcpip", [f"{workspace!r} shares the gateway's network namespace"]
            )
        return await connect_in_netns(f"/proc/self/fd/{pod.netns_fd}", host, port)

    def _session_ended(self, pod: _Pod, ident: int) -> None:
        pod.sessions.discard(ident)
        if not pod.sessions:
            pod.idle_since = time.monotonic()

    # -- sessions ---------------------------------------------------------------------------

    def _env(self, spec: SessionSpec, pod: _Pod, session_dir: str, tty: bool) -> dict[str, str]:
        env = {
            "HOME": pod.home,
            "USER": spec.username,
            "LOGNAME": spec.username,
            "SHELL": self.shell,
            "PATH": _PATH,
            "STOCKADE_WORKSPACE": spec.workspace,
            "STOCKADE_SESSION_ID": spec.session_id,
        }
        if spec.client is not None:
            client_ip, client_port, server_ip, server_port = spec.client
            env["SSH_CLIENT"] = f"{client_ip} {client_port} {server_port}"
            env["SSH_CONNECTION"] = f"{client_ip} {client_port} {server_ip} {server_port}"
        if tty:
            env["SSH_TTY"] = "/dev/tty"
            env["TERM"] = spec.term_type or "xterm"
        env.update(spec.env)
        if spec.credential_socket:
            env["STOCKADE_SOCKET"] = f"{session_dir}/credentials.sock"
            env["STOCKADE_CREDENTIAL_SOCKET"] = env["STOCKADE_SOCKET"]  # the helpers' name
            if self.credential_helper is not None:
                env["PATH"] = f"{env.get('PATH', _PATH)}:{HELPER_DIR}"
                # git asks the helper through the environment: nothing written in the home
                env["GIT_CONFIG_COUNT"] = "1"
                env["GIT_CONFIG_KEY_0"] = "credential.helper"
                env["GIT_CONFIG_VALUE_0"] = f"{HELPER_DIR}/git-credential-stockade"
        if spec.agent_path:
            env["SSH_AUTH_SOCK"] = f"{session_dir}/agent.sock"
        if shared_session(spec, pod.owner):  # never there (see open), whatever the caller did
            env.pop("STOCKADE_TOKEN", None)
        return env

    def _program(self, spec: SessionSpec) -> list[str]:
        if spec.subsystem is not None:
            raise InvalidInput("subsystem", f"{spec.subsystem!r} is not offered in containers")
        if spec.command is not None:
            return [self.shell, "-c", spec.command]
        return [self.shell, "-l"]

    async def open(self, spec: SessionSpec) -> PodmanWorkload:
        pod = await self.ensure(spec)
        if shared_session(spec, pod.owner) and (
            spec.credential_socket or spec.agent_path or "STOCKADE_TOKEN" in spec.env
        ):
            # Someone else's workspace runs as its owner's uid: the owner can ptrace this
            # session's processes and plant what they run, so they carry no credentials.
            _log.warning(
                "shared_session_credentials_withheld",
                workspace=spec.workspace,
                user=spec.username,
                owner=pod.owner,
                reason="the workspace runs as its owner's uid: no token, credential socket"
                " or forwarded agent for another user's session",
            )
            spec = without_credentials(spec)
        if spec.username not in pod.users:
            pod.users.add(spec.username)
            self._write_identity(pod)
        link = pod.link
        assert link is not None
        ident = self._next_ident
        self._next_ident += 1
        sid = hashlib.sha256(spec.session_id.encode()).hexdigest()[:16]
        host_dir = pod.layout.pub / "s" / sid
        host_dir.mkdir(mode=0o700)
        os.chown(host_dir, pod.uid, pod.uid)
        inner_dir = f"{AGENT_MOUNT}/s/{sid}"
        proxies: list[_SessionProxy] = []
        if spec.credential_socket:
            proxies.append(
                _SessionProxy(host_dir / "credentials.sock", spec.credential_socket, pod)
            )
        if spec.agent_path:
            proxies.append(_SessionProxy(host_dir / "agent.sock", spec.agent_path, pod))
        for proxy in proxies:
            await proxy.start()
        tty = spec.term_type is not None
        env = self._env(spec, pod, inner_dir, tty)
        argv = self._program(spec)
        payload = b"S" + struct.pack("<II", ident, 1 if tty else 0)
        payload += b"".join(a.encode() + b"\0" for a in argv) + b"\0"
        payload += b"".join(f"{k}={v}".encode() + b"\0" for k, v in env.items()) + b"\0"
        payload += pod.home.encode() + b"\0"
        if len(payload) > 60000:
            raise InvalidInput("env", "the session's command and environment are too large")
        started: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        link.pending[ident] = started
        link.exits[ident] = exited
        theirs: list[int] = []
        ours: tuple[FdWriter, FdReader, FdReader | None, int | None]
        try:
            if tty:
                master, slave = pty.openpty()
                _set_winsize(slave, *spec.term_size)
                theirs = [slave]
                ours = (FdWriter(os.dup(master)), FdReader(master), None, master)
            else:
                in_r, in_w = os.pipe()
                out_r, out_w = os.pipe()
                err_r, err_w = os.pipe()
                theirs = [in_r, out_w, err_w]
                ours = (FdWriter(in_w), FdReader(out_r), FdReader(err_r), None)
            for fd in theirs:  # /dev/stdout and /dev/stderr reopen as the workspace uid
                os.fchown(fd, pod.uid, pod.uid)
            link.send(payload, theirs)
        finally:
            for fd in theirs:
                os.close(fd)
        workload = PodmanWorkload(
            runtime=self,
            pod=pod,
            ident=ident,
            stdin=ours[0],
            stdout=ours[1],
            stderr=ours[2],
            master=ours[3],
            exited=exited,
            proxies=proxies,
            session_dir=host_dir,
        )
        pod.sessions.add(ident)
        try:
            pid = await asyncio.wait_for(started, 10.0)
        except BaseException as exc:
            link.exits.pop(ident, None)
            if not exited.done():
                exited.set_result(127 << 8)
            for proxy in proxies:
                proxy.set_leader(None)
            await workload.close()
            if isinstance(exc, OSError | TimeoutError | ConnectionError):
                raise BackendError(
                    f"the session could not start in {spec.workspace!r}: {exc}"
                ) from exc
            raise
        workload.pid = pid
        for proxy in proxies:
            proxy.set_leader(pid)
        return workload

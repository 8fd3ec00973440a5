"""The sandbox runtime (the gateway's ``local`` backend): a home per workspace, sessions in
bubblewrap.

A session gets new PID, IPC and UTS namespaces, a read-only view of the host with a private,
writable ``/tmp`` (1777), the data dir hidden except its own home (the only other writable
place), the host's unix sockets hidden (:func:`_host_socket_masks`), ``no_new_privs``, an empty
capability set and a seccomp filter (:func:`~stockade.workspace._seccomp.sandbox_filter`: no
ptrace, namespaces, mounts or keyrings). Each workspace runs as its own uid
(:class:`~stockade.workspace.UidAllocator`, stable across restarts), under its user's name in a
generated ``/etc/passwd``; with ``network=True`` (as root) it runs in its own network namespace
(``stockade-<hash>``, loopback only: the gateway host's listeners are out of reach; forwards
enter it through :meth:`SandboxBackend.open_connection_in`). Each session gets its own broker
socket (:class:`~stockade.workspace.CredentialSockets`), owned by the workspace's uid and bound
into its sandbox alone, on an unlistable tmpfs: the credential helpers use it
(``STOCKADE_CREDENTIAL_SOCKET``), so the session holds no ``STOCKADE_TOKEN`` and needs no route
to the broker. With the ``sudo`` obligation a session is root of its own user namespace (it owns
the workspace and nothing else). When a workspace changes hands (its owner or uid differs from
its running sessions'), the former holder's sessions end first.

Everything this module does as root on a session's behalf treats the home and the agent's
directory as the session's: tools run by absolute path (never through the session's PATH,
which begins with ``~/.stockade/bin``), and no link there is followed.

``auto`` never falls back to no isolation: without bubblewrap the backend refuses to start and
says what to install. Only an explicit ``none`` runs plain subprocesses (as the workspace uid).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import hashlib
import os
import pty
import re
import shutil
import signal
import socket
import stat
import struct
import subprocess
import termios
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from stockade.core.errors import BackendError, ToolMissing
from stockade.core.logging import get_logger

from ._fdio import CHUNK, FdReader, FdWriter
from ._nsenter import connect_in_netns
from ._runtime import ExitStatus, SessionSpec, shared_session, without_credentials
from ._seccomp import SECCOMP_SUPPORTED, sandbox_filter
from ._sockets import Closable, CredentialSockets, SessionSocketOpener, close_quietly
from ._uids import UidAllocator

__all__ = ["SFTP_SERVER", "HomeHook", "LocalWorkload", "SandboxBackend", "sandbox_netns"]

SFTP_SERVER = "/usr/lib/openssh/sftp-server"
_PATH = "/usr/local/bin:/usr/bin:/bin"
#: Where the tools the sandbox runs are looked up: the host's own directories, never the
#: session's PATH (it starts with the home's ``.stockade/bin``, which the session writes).
_SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
_USER_NAME = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")
#: Capacity of a session's stdout pipe: four reads of CHUNK.
PIPE_SIZE = 4 * CHUNK
_log = get_logger("stockade.workspace.sandbox")

_SIGNALS = {
    name.removeprefix("SIG"): getattr(signal, name)
    for name in ("SIGINT", "SIGTERM", "SIGKILL", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")
}


def _set_winsize(fd: int, columns: int, rows: int, width: int, height: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, width, height))


def _grow_pipe(fd: int) -> None:
    """Give a pipe room for several reads of :data:`CHUNK` (the default 64 KiB caps each read
    and wakes the gateway four times as often under bulk output)."""
    with contextlib.suppress(OSError):  # above /proc/sys/fs/pipe-max-size for non-root
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)


def _take_terminal() -> None:  # runs in the child between fork and exec
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class LocalWorkload:
    """A session process started by :class:`SandboxBackend`, holding its broker socket (if
    any) until it is closed."""

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        stdin: FdWriter,
        stdout: FdReader,
        stderr: FdReader | None,
        master: int | None,
        credentials: Closable | None = None,
    ) -> None:
        self._proc = proc
        self._credentials = credentials
        self._stdin = stdin
        self._stdout = stdout
        self._stderr = stderr
        self._master = master
        self._pidfd = os.pidfd_open(proc.pid)
        self._status: ExitStatus | None = None

    @property
    def running(self) -> bool:
        """Whether the session's process has not been reaped yet."""
        return self._status is None and self._proc.poll() is None

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
        if number is not None and self._status is None:
            try:
                os.killpg(self._proc.pid, number)
            except ProcessLookupError:
                return

    async def wait(self) -> ExitStatus:
        if self._status is None:
            loop = asyncio.get_running_loop()
            exited = loop.create_future()
            loop.add_reader(self._pidfd, exited.set_result, None)
            try:
                await exited
            finally:
                loop.remove_reader(self._pidfd)
            code = self._proc.wait()
            if code < 0:
                self._status = ExitStatus(signal=signal.Signals(-code).name.removeprefix("SIG"))
            else:
                self._status = ExitStatus(code=code)
        return self._status

    async def close(self) -> None:
        if self._proc.poll() is None:
            for sig in (signal.SIGHUP, signal.SIGKILL):
                try:
                    os.killpg(self._proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    await asyncio.wait_for(self.wait(), 2.0)
                    break
                except TimeoutError:
                    continue
        await self.wait()
        self._stdin.close()
        self._stdout.close()
        if self._stderr is not None:
            self._stderr.close()
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1
        credentials, self._credentials = self._credentials, None
        await close_quietly(credentials)  # the broker's socket goes with the session


def _grant_socket(path: Path, uid: int, gid: int) -> None:
    """Give the forwarded agent's socket (and its directory) to the workspace uid, following
    no link.

    The directory is bound into the sandbox writable, and every session of one SSH connection
    shares it: an earlier session can put a symlink where the socket was, and a plain
    ``chown`` of the path, as root, followed it (``ln -s /etc/ssh/ssh_host_ed25519_key
    $SSH_AUTH_SOCK``, then a second session made the host's key the workspace's and read it).
    Anything but a socket is left alone: that session just has no agent."""
    try:
        folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        _log.warning("agent_socket_unusable", path=str(path), error=exc.strerror)
        return
    try:
        os.fchown(folder, uid, gid)
        try:
            mode = os.stat(path.name, dir_fd=folder, follow_symlinks=False).st_mode
        except FileNotFoundError:
            mode = 0
        if not stat.S_ISSOCK(mode):
            _log.warning("agent_socket_unusable", path=str(path), error="not a socket")
            return
        os.chown(path.name, uid, gid, dir_fd=folder, follow_symlinks=False)
    finally:
        os.close(folder)


#: Called with (home, uid, gid) before each session in that home; configuration only.
HomeHook = Callable[[Path, int, int], None]


def _session_path(home: Path) -> str:
    """The session's PATH: the home's credential-helper wrappers first when present (Docker finds
    ``docker-credential-stockade`` only through PATH), then the system directories."""
    helpers = home / ".stockade" / "bin"
    return f"{helpers}:{_PATH}" if helpers.is_dir() else _PATH


def sandbox_netns(workspace: str, data_dir: Path, *, uid: int) -> str:
    """The name of the network namespace (``/run/netns/<name>``) of ``workspace`` running as
    ``uid``.

    Named after the data dir as well as the workspace: network namespaces are global to the
    host, and two Stockade instances on one host (two data dirs, say two teams' gateways) must
    never put their workspaces of the same name in one namespace, where each would reach the
    other's listeners. And after its uid: a workspace removed and re-created for someone else
    with ``--purge`` gets a fresh uid: whatever the old owner left running (a process that
    outlived its session; removal ends the sessions and drops the name) stays in the old
    namespace; sharing it, each reached the other's listeners."""
    key = f"{data_dir.resolve()}\0{workspace}\0{uid}".encode()
    return "stockade-" + hashlib.sha256(key).hexdigest()[:12]


def _ensure_netns(name: str) -> str:
    """``/run/netns/<name>``, a live network namespace (created when there is none).

    A file there is not enough: ``ip netns add`` bind-mounts the namespace onto it in the
    mount namespace it runs in, and when that mount namespace goes (a gateway run under
    ``ip netns exec``, a systemd unit with a private /run, a container) only the empty file
    stays behind. ``nsenter`` then fails on it ("Invalid argument") and so would every session
    of the workspace, after a mere restart. Such a leftover is replaced."""
    path = f"/run/netns/{name}"
    if os.path.ismount(path):  # the namespace's own mount, in this mount namespace
        return path
    ip = shutil.which("ip")
    if ip is None:
        raise ToolMissing("ip", "iproute2")
    if os.path.lexists(path):
        _log.info("sandbox_netns_replaced", netns=name, reason="a file without its namespace")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    added = subprocess.run([ip, "netns", "add", name], capture_output=True, check=False)
    if added.returncode != 0 or not os.path.ismount(path):
        why = added.stderr.decode(errors="replace").strip()[-200:]
        raise BackendError(f"creating network namespace {name} failed: {why or 'not mounted'}")
    subprocess.run([ip, "-n", name, "link", "set", "lo", "up"], check=False)
    return path


#: Where the host's services keep their unix sockets; hidden (an empty tmpfs) in every sandbox.
_RUNTIME_DIRS = ("/run", "/var/run")


def _host_socket_masks(data_dir: Path, homes: Path) -> list[str]:
    """bubblewrap arguments hiding the host's unix sockets from a sandbox.

    A unix socket is reached by its path, and ``--ro-bind / /`` shows every path: a read-only
    mount does not stop ``connect`` (PostgreSQL's ``/run/postgresql`` socket with ``local ...
    trust`` made any session its superuser, and ``COPY ... TO PROGRAM`` ran commands on the
    host as ``postgres``; likewise D-Bus, container engines, the init system). So the runtime
    directories get an empty tmpfs (``/etc/resolv.conf`` pointing into them stays readable),
    and every other path-named socket bound in the host's network namespace
    (``/proc/net/unix``) when the session starts is covered with ``/dev/null``. The session's
    own sockets (credential, agent) are bound in afterwards; sockets under ``homes`` are left
    as they are (each home is 0700 to its own uid, and the session's own is bound over it)."""
    argv: list[str] = []
    hidden: list[str] = []
    for name in _RUNTIME_DIRS:
        if os.path.isdir(name) and not os.path.islink(name):
            argv += ["--perms", "0755", "--tmpfs", name]
            hidden.append(name)
    resolv = os.path.realpath("/etc/resolv.conf")
    if any(_within(resolv, d) for d in hidden) and os.path.isfile(resolv):
        argv += ["--ro-bind", resolv, resolv]
    hidden += ["/tmp", str(data_dir), str(homes), "/proc", "/dev"]  # noqa: S108 - private here
    for path in sorted(_listening_paths()):
        real = os.path.realpath(path)
        if any(_within(real, d) for d in hidden):
            continue
        with contextlib.suppress(OSError):
            if stat.S_ISSOCK(os.lstat(real).st_mode):
                argv += ["--ro-bind", "/dev/null", real]
    return argv


def _within(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def _listening_paths() -> set[str]:
    """Paths of the unix sockets bound in this network namespace (``/proc/net/unix``)."""
    try:
        lines = Path("/proc/net/unix").read_text(errors="replace").splitlines()[1:]
    except OSError:
        return set()
    rows = (line.split() for line in lines)
    return {row[7] for row in rows if len(row) > 7 and row[7].startswith("/")}


def _system_tool(name: str) -> str:
    """The absolute path of ``name`` in :data:`_SYSTEM_PATH`.

    The sandbox's commands (``nsenter`` around bubblewrap, ``setpriv`` and ``unshare`` inside
    it) must never be found through the session's environment: ``subprocess`` and bubblewrap
    resolve a bare name with the child's PATH, the session's, which begins with
    ``~/.stockade/bin``. A session put an ``nsenter`` there and the next one ran it as root
    on the host, outside any sandbox (its ``setpriv`` ran as root inside, with CAP_SETUID)."""
    path = shutil.which(name, path=_SYSTEM_PATH)
    if path is None:
        raise ToolMissing(name, "util-linux")
    return path


class SandboxBackend:
    """Runs sessions on this host, one home per workspace under ``root``."""

    name = "local"
    shares_workspace_uid = True
    """Every session of a workspace runs as its uid: another user's session there gets no
    credentials (:func:`shared_session`)."""

    def __init__(
        self,
        *,
        root: Path,
        data_dir: Path,
        sandbox: Literal["auto", "bubblewrap", "none"],
        shell: str,
        uid: int = 65534,
        gid: int = 65534,
        prepare_home: HomeHook | None = None,
        uids: UidAllocator | None = None,
        network: bool = False,
        sockets: SessionSocketOpener | None = None,
    ) -> None:
        """``uids`` gives each workspace its own uid (as root; default: a file in ``data_dir``);
        ``uid``/``gid`` are used only when running unprivileged is impossible to vary (not root).
        ``network``: a network namespace per workspace (as root; otherwise one per session),
        loopback only. ``sockets`` (the broker's ``open_session_socket``) gives each
        bubblewrapped session its own broker socket, owned by the workspace's uid and bound
        into that session's sandbox alone: the helpers reach the broker through it, so the
        session needs neither ``STOCKADE_TOKEN`` nor the host's network (without it, sessions
        keep the token and ``STOCKADE_API`` over TLS, which a private namespace cannot
        reach)."""
        self.root = root.resolve()
        self.prepare_home = prepare_home
        self.data_dir = data_dir.resolve()
        self.shell = shell
        bwrap = shutil.which("bwrap")
        if sandbox != "none" and bwrap is None:
            # auto never falls back to no isolation
            raise ToolMissing("bwrap", "bubblewrap (or podman, for container workspaces)")
        self.bwrap = bwrap if sandbox != "none" else None
        self._tools: dict[str, str] = {}
        self.as_root = os.geteuid() == 0
        self.uid = uid if self.as_root else os.geteuid()
        self.gid = gid if self.as_root else os.getegid()
        self.uids = uids or UidAllocator(self.data_dir / "workspace-uids.json")
        self.network = network
        self.sockets = CredentialSockets(data_dir=self.data_dir, opener=sockets)
        self._live: dict[str, list[tuple[tuple[str, int], LocalWorkload]]] = {}
        """Each workspace's running sessions with the holder (owner, uid) they started for."""
        self.seccomp = self.bwrap is not None and os.uname().machine == SECCOMP_SUPPORTED
        if self.bwrap is not None and not self.seccomp:
            _log.warning(
                "sandbox_without_seccomp",
                machine=os.uname().machine,
                reason=f"the sandbox's seccomp filter is written for {SECCOMP_SUPPORTED} only",
            )
        if self.bwrap is None:
            _log.warning(
                "local_sessions_unsandboxed",
                hint="sandbox=none was chosen; install bubblewrap and use auto to sandbox sessions",
            )

    def ids(self, workspace: str) -> tuple[int, int]:
        """The (uid, gid) sessions of ``workspace`` run as."""
        if not self.as_root:
            return self.uid, self.gid
        uid = self.uids.uid(workspace)
        return uid, uid

    def netns(self, workspace: str) -> str | None:
        """The path of ``workspace``'s network namespace (created on first use), or ``None``."""
        if not (self.as_root and self.network and self.bwrap is not None):
            return None
        return _ensure_netns(sandbox_netns(workspace, self.data_dir, uid=self.ids(workspace)[0]))

    def remove_netns(self, workspace: str) -> None:
        """Delete ``workspace``'s network namespace of this data dir (the gateway calls it when
        the workspace is removed and none of its sessions is left here). A workspace that
        never ran here has no uid: none is allocated just to find a namespace."""
        if self.as_root:
            uid = self.uids.known().get(workspace)
            if uid is None:
                return
        else:
            uid = self.uid
        name = sandbox_netns(workspace, self.data_dir, uid=uid)
        if not os.path.exists(f"/run/netns/{name}"):
            return
        ip = shutil.which("ip") or "ip"
        done = subprocess.run([ip, "netns", "delete", name], capture_output=True, check=False)
        if done.returncode != 0:
            _log.warning(
                "workspace_netns_not_removed",
                workspace=workspace,
                netns=name,
                error=done.stderr.decode(errors="replace").strip()[:200],
            )
            return
        _log.info("workspace_netns_removed", workspace=workspace, netns=name)

    @property
    def forwards_from_workspace(self) -> bool:
        """Whether port forwards leave from the workspace's own network namespace (the
        gateway's ``ssh -L``/``-W`` then go through :meth:`open_forward`)."""
        return self.as_root and self.network and self.bwrap is not None

    async def open_forward(self, spec: SessionSpec, host: str, port: int) -> socket.socket:
        """A forward of ``spec``'s session, leaving from its workspace's namespace."""
        return await self.open_connection_in(spec.workspace, host, port)

    async def open_connection_in(self, workspace: str, host: str, port: int) -> socket.socket:
        """A TCP connection leaving from ``workspace``'s network namespace."""
        path = self.netns(workspace)
        if path is None:
            raise BackendError("this sandbox has no network namespace of its own")
        return await connect_in_netns(path, host, port)

    def home(self, workspace: str) -> Path:
        """The workspace's home, created on first use (0700, owned by the sandbox user), then
        handed to ``prepare_home`` (credential-helper configuration) before every session."""
        path = self.root / workspace
        uid, gid = self.ids(workspace)
        if not path.is_dir():
            self.root.mkdir(parents=True, exist_ok=True, mode=0o711)
            path.mkdir(mode=0o700)
            if self.as_root:
                os.chown(path, uid, gid)
        elif self.as_root and path.stat().st_uid != uid:
            # a home from before per-workspace uids (the shared sandbox user): it moves to the
            # workspace's own uid, with everything in it
            for parent, dirs, files in os.walk(path):
                for entry in (*dirs, *files):
                    os.lchown(os.path.join(parent, entry), uid, gid)
            os.chown(path, uid, gid)
        if self.prepare_home is not None:
            self.prepare_home(path, uid, gid)
        return path

    def _program(self, spec: SessionSpec) -> list[str]:
        if spec.subsystem == "sftp":
            return [SFTP_SERVER]
        if spec.subsystem is not None:
            raise ValueError(f"unsupported subsystem {spec.subsystem!r}")
        if spec.command is not None:
            return [self.shell, "-c", spec.command]
        return [self.shell, "-l"]

    def _argv(self, spec: SessionSpec, home: Path, seccomp: int | None = None) -> list[str]:
        """``seccomp``: the fd the session's bubblewrap reads its filter from."""
        program = self._program(spec)
        if self.bwrap is None:
            return program
        argv = [
            self.bwrap,
            "--ro-bind", "/", "/",
            "--dev", "/dev",
            "--proc", "/proc",
            "--perms", "1777", "--tmpfs", "/tmp",  # noqa: S108 - private, writable
            "--tmpfs", str(self.data_dir),
            *_host_socket_masks(self.data_dir, self.root),
        ]  # fmt: skip
        for parent in reversed(home.parents):
            if parent.is_relative_to(self.data_dir) and parent != self.data_dir:
                argv += ["--perms", "0755", "--dir", str(parent)]
        argv += ["--bind", str(home), str(home)]
        if self.as_root:
            passwd, group = self._identity_files(spec, home)
            argv += ["--ro-bind", str(passwd), "/etc/passwd", "--ro-bind", str(group), "/etc/group"]
        if spec.agent_path:
            agent_dir = str(Path(spec.agent_path).parent)
            argv += ["--bind", agent_dir, agent_dir]
        if spec.credential_socket:  # this session's sandbox only
            argv += self._socket_mount(Path(spec.credential_socket), home)
        argv += [
            "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            "--die-with-parent", "--cap-drop", "ALL",
        ]  # fmt: skip
        if seccomp is not None:  # loaded last, right before the session's program
            argv += ["--seccomp", str(seccomp)]
        netns = self.netns(spec.workspace)
        if netns is None and self.network:
            argv += ["--unshare-net"]
        inner = ["/bin/sh", "-c", 'cd "$HOME" && exec "$@"', "sh"]
        if spec.sudo:
            # root of its own user namespace: owns the workspace, nothing outside it
            inner += [self._tool("unshare"), "--user", "--map-root-user", "--"]
        if not self.as_root:
            return [*argv, "--", *inner, *program]
        argv += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_SETPCAP"]
        uid, gid = self.ids(spec.workspace)
        drop = [
            self._tool("setpriv"), f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
            "--inh-caps=-all", "--bounding-set=-all", "--",
        ]  # fmt: skip
        enter = [] if netns is None else [self._tool("nsenter"), f"--net={netns}", "--"]
        return [*enter, *argv, "--", *drop, *inner, *program]

    def _tool(self, name: str) -> str:
        if name not in self._tools:
            self._tools[name] = _system_tool(name)
        return self._tools[name]

    def _socket_mount(self, path: Path, home: Path) -> list[str]:
        """bubblewrap arguments showing the socket at ``path`` and nothing else of its
        directory: a fresh, unlistable tmpfs over that directory (the host's is root-only;
        other sessions' sockets are never there) with this one socket bound in it."""
        argv: list[str] = []
        for parent in reversed(path.parent.parents):
            if parent.is_relative_to(self.data_dir) and parent != self.data_dir:
                argv += ["--perms", "0755", "--dir", str(parent)]
        directory = path.parent
        if directory != Path("/tmp") and not home.is_relative_to(directory):  # noqa: S108
            argv += ["--perms", "0711", "--tmpfs", str(directory)]
        return [*argv, "--bind", str(path), str(path)]

    def _identity_files(self, spec: SessionSpec, home: Path) -> tuple[Path, Path]:
        """The host's passwd and group plus the workspace uid under the session user's name
        (``ssh``, ``git`` and ``id`` look it up), regenerated for each session."""
        uid, gid = self.ids(spec.workspace)
        name = spec.username if _USER_NAME.match(spec.username) else f"ws{uid}"
        etc = (
            self.data_dir / "sandbox-etc" / hashlib.sha256(spec.workspace.encode()).hexdigest()[:16]
        )
        etc.mkdir(parents=True, exist_ok=True, mode=0o755)
        host_passwd = Path("/etc/passwd").read_text()
        host_group = Path("/etc/group").read_text()
        taken = {line.split(":", 1)[0] for line in host_passwd.splitlines()}
        passwd, group = host_passwd, host_group
        if name not in taken:
            passwd += f"{name}:x:{uid}:{gid}:{name}:{home}:{self.shell}\n"
            group += f"{name}:x:{gid}:\n"
        paths = (etc / f"passwd-{name}", etc / f"group-{name}")
        for path, text in zip(paths, (passwd, group), strict=True):
            if not path.is_file() or path.read_text() != text:
                tmp = path.with_suffix(".tmp")
                tmp.write_text(text)
                tmp.chmod(0o644)
                tmp.replace(path)
        return paths

    def _env(self, spec: SessionSpec, home: Path) -> dict[str, str]:
        user = spec.username
        env = {
            "HOME": str(home),
            "USER": user,
            "LOGNAME": user,
            "SHELL": self.shell,
            "PATH": _session_path(home),
            "STOCKADE_WORKSPACE": spec.workspace,
            "STOCKADE_SESSION_ID": spec.session_id,
        }
        if spec.term_type:
            env["TERM"] = spec.term_type
        if spec.agent_path:
            env["SSH_AUTH_SOCK"] = spec.agent_path
        if spec.client is not None:
            client_ip, client_port, server_ip, server_port = spec.client
            env["SSH_CLIENT"] = f"{client_ip} {client_port} {server_port}"
            env["SSH_CONNECTION"] = f"{client_ip} {client_port} {server_ip} {server_port}"
        env.update(spec.env)
        if spec.credential_socket:
            env["STOCKADE_SOCKET"] = spec.credential_socket
            env["STOCKADE_CREDENTIAL_SOCKET"] = spec.credential_socket  # the helpers' name
            # the socket is the session's credential: the helpers need no token with it, and
            # a bearer token in the environment is one more copy to steal (/proc/PID/environ,
            # a core dump, a child's logs)
            env.pop("STOCKADE_TOKEN", None)
        if shared_session(spec):  # never there (see open), whatever the caller did
            env.pop("STOCKADE_TOKEN", None)
        return env

    def _grant_agent(self, spec: SessionSpec) -> None:
        if not self.as_root:
            return
        uid, gid = self.ids(spec.workspace)
        if spec.agent_path:
            _grant_socket(Path(spec.agent_path), uid, gid)
        if spec.credential_socket:
            os.chown(spec.credential_socket, uid, gid)
            os.chmod(spec.credential_socket, 0o600)

    def _spawn(
        self,
        argv: list[str],
        env: dict[str, str],
        home: Path,
        fds: tuple[int, int, int],
        tty: bool,
        ids: tuple[int, int],
        keep: tuple[int, ...] = (),
    ) -> subprocess.Popen[bytes]:
        drop = self.bwrap is None and self.as_root
        if self.as_root:  # /dev/stdout and /dev/stderr reopen as the session's uid
            for fd in set(fds):
                os.fchown(fd, *ids)
        return subprocess.Popen(
            argv,
            stdin=fds[0],
            stdout=fds[1],
            stderr=fds[2],
            env=env,
            cwd=home,
            start_new_session=True,
            preexec_fn=_take_terminal if tty else None,
            user=ids[0] if drop else None,
            group=ids[1] if drop else None,
            extra_groups=[] if drop else None,
            pass_fds=keep,
        )

    async def open(self, spec: SessionSpec) -> LocalWorkload:
        if shared_session(spec) and (
            spec.credential_socket or spec.agent_path or "STOCKADE_TOKEN" in spec.env
        ):
            # Someone else's workspace runs as its owner's uid in the owner's home: the owner
            # plants what this session runs (~/.profile, ~/.gitconfig), so it carries no
            # credentials.
            _log.warning(
                "shared_session_credentials_withheld",
                workspace=spec.workspace,
                user=spec.username,
                owner=str(spec.workspace_config.get("owner")),
                reason="the workspace runs as its owner's uid: no token, credential socket"
                " or forwarded agent for another user's session",
            )
            spec = without_credentials(spec)
        ids = self.ids(spec.workspace)
        holder = (str(spec.workspace_config.get("owner")), ids[0])
        await self._end_former_holders(spec.workspace, holder)
        home = self.home(spec.workspace)
        handle = None
        if self.bwrap is not None and not spec.credential_socket:
            # owned by the workspace's uid (as root; else ours, which the session runs as)
            handle, path = await self.sockets.open(spec, ids[0] if self.as_root else None)
            if path is not None:
                spec = dataclasses.replace(spec, credential_socket=path)
        try:
            work = self._start(spec, home, ids, handle)
        except BaseException:
            await close_quietly(handle)
            raise
        self._live.setdefault(spec.workspace, []).append((holder, work))
        return work

    async def _end_former_holders(self, workspace: str, holder: tuple[str, int]) -> None:
        """End the sessions ``workspace`` is still running for another holder (owner, uid).

        Removing a workspace ends none of its sessions; given again (``--reuse-home`` keeps
        its uid and home), the former owner's session kept writing the new owner's home as
        that uid (a ``~/.profile`` running in their logins, beside their credential socket).
        The Podman runtime replaces a Pod started for another holder; here its sessions end."""
        live = [(h, w) for h, w in self._live.get(workspace, []) if w.running]
        former = [w for h, w in live if h != holder]
        if former:
            _log.warning(
                "workspace_sessions_ended",
                workspace=workspace,
                sessions=len(former),
                reason="the workspace's owner or uid changed",
            )
            for work in former:
                await work.close()
        self._live[workspace] = [(h, w) for h, w in live if h == holder]

    def _start(
        self, spec: SessionSpec, home: Path, ids: tuple[int, int], handle: Closable | None
    ) -> LocalWorkload:
        seccomp = self._seccomp_fd(spec)
        try:
            return self._launch(spec, home, ids, handle, seccomp)
        finally:
            if seccomp is not None:
                os.close(seccomp)

    def _seccomp_fd(self, spec: SessionSpec) -> int | None:
        """A sealed memfd holding the session's seccomp filter (``sudo``: its own
        ``unshare(CLONE_NEWUSER)`` allowed), or ``None`` without bubblewrap or off x86_64."""
        if not self.seccomp:
            return None
        fd = os.memfd_create("stockade-seccomp", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.write(fd, sandbox_filter(allow_user_namespace=spec.sudo))
            os.lseek(fd, 0, os.SEEK_SET)
            seals = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals | fcntl.F_SEAL_WRITE)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _launch(
        self,
        spec: SessionSpec,
        home: Path,
        ids: tuple[int, int],
        handle: Closable | None,
        seccomp: int | None,
    ) -> LocalWorkload:
        argv = self._argv(spec, home, seccomp)
        env = self._env(spec, home)
        self._grant_agent(spec)
        keep = () if seccomp is None else (seccomp,)
        if spec.term_type is not None and spec.subsystem is None:
            master, slave = pty.openpty()
            try:
                _set_winsize(slave, *spec.term_size)
                proc = self._spawn(argv, env, home, (slave, slave, slave), True, ids, keep)
            except BaseException:
                os.close(master)
                raise
            finally:
                os.close(slave)
            reader = FdReader(master)
            return LocalWorkload(proc, FdWriter(os.dup(master)), reader, None, master, handle)
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        _grow_pipe(out_r)
        try:
            proc = self._spawn(argv, env, home, (in_r, out_w, err_w), False, ids, keep)
        except BaseException:
            for fd in (in_w, out_r, err_r):
                os.close(fd)
            raise
        finally:
            for fd in (in_r, out_w, err_w):
                os.close(fd)
        return LocalWorkload(proc, FdWriter(in_w), FdReader(out_r), FdReader(err_r), None, handle)

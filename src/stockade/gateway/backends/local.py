"""The ``local`` backend: a per-workspace home under the data dir, sessions in a sandbox.

With bubblewrap (``bwrap``) installed, a session gets new PID, IPC and UTS namespaces, a
read-only view of the host with a private ``/tmp``, the data dir hidden except its own home (the
only writable place), ``no_new_privs`` and an empty capability set; it runs as the sandbox user
(``nobody`` unless configured); with the ``sudo`` obligation it is root of its own user
namespace (it owns the workspace and nothing else). Without bubblewrap it is a plain subprocess
as the sandbox user and the gateway warns at start-up. The network namespace is shared, so
``ssh`` and ``git`` from inside the session reach the network the host reaches.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import pty
import shutil
import signal
import struct
import subprocess
import termios
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from stockade.core.errors import ToolMissing
from stockade.core.logging import get_logger

from . import ExitStatus, SessionSpec
from ._fdio import CHUNK, FdReader, FdWriter

__all__ = ["SFTP_SERVER", "HomeHook", "LocalBackend", "LocalWorkload"]

SFTP_SERVER = "/usr/lib/openssh/sftp-server"
_PATH = "/usr/local/bin:/usr/bin:/bin"
#: Capacity of a session's stdout pipe: four reads of CHUNK.
PIPE_SIZE = 4 * CHUNK
_log = get_logger("stockade.gateway.local")

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
    """A session process started by :class:`LocalBackend`."""

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        stdin: FdWriter,
        stdout: FdReader,
        stderr: FdReader | None,
        master: int | None,
    ) -> None:
        self._proc = proc
        self._stdin = stdin
        self._stdout = stdout
        self._stderr = stderr
        self._master = master
        self._pidfd = os.pidfd_open(proc.pid)
        self._status: ExitStatus | None = None

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


#: Called with (home, uid, gid) before each session in that home; configuration only.
HomeHook = Callable[[Path, int, int], None]


def _session_path(home: Path) -> str:
    """The session's PATH: the home's credential-helper wrappers first when present (Docker finds
    ``docker-credential-stockade`` only through PATH), then the system directories."""
    helpers = home / ".stockade" / "bin"
    return f"{helpers}:{_PATH}" if helpers.is_dir() else _PATH


class LocalBackend:
    """Runs sessions on this host, one home per workspace under ``root``."""

    name = "local"

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
    ) -> None:
        self.root = root.resolve()
        self.prepare_home = prepare_home
        self.data_dir = data_dir.resolve()
        self.shell = shell
        bwrap = shutil.which("bwrap")
        if sandbox == "bubblewrap" and bwrap is None:
            raise ToolMissing("bwrap", "bubblewrap")
        self.bwrap = bwrap if sandbox != "none" else None
        self.as_root = os.geteuid() == 0
        self.uid = uid if self.as_root else os.geteuid()
        self.gid = gid if self.as_root else os.getegid()
        if self.bwrap is None:
            _log.warning(
                "local_sessions_unsandboxed",
                hint="install bubblewrap (apt-get install -y bubblewrap) to sandbox sessions",
            )

    def home(self, workspace: str) -> Path:
        """The workspace's home, created on first use (0700, owned by the sandbox user), then
        handed to ``prepare_home`` (credential-helper configuration) before every session."""
        path = self.root / workspace
        if not path.is_dir():
            self.root.mkdir(parents=True, exist_ok=True, mode=0o711)
            path.mkdir(mode=0o700)
            if self.as_root:
                os.chown(path, self.uid, self.gid)
        if self.prepare_home is not None:
            self.prepare_home(path, self.uid, self.gid)
        return path

    def _program(self, spec: SessionSpec) -> list[str]:
        if spec.subsystem == "sftp":
            return [SFTP_SERVER]
        if spec.subsystem is not None:
            raise ValueError(f"unsupported subsystem {spec.subsystem!r}")
        if spec.command is not None:
            return [self.shell, "-c", spec.command]
        return [self.shell, "-l"]

    def _argv(self, spec: SessionSpec, home: Path) -> list[str]:
        program = self._program(spec)
        if self.bwrap is None:
            return program
        argv = [
            self.bwrap,
            "--ro-bind", "/", "/",
            "--dev", "/dev",
            "--proc", "/proc",
            "--tmpfs", "/tmp",  # noqa: S108 - a private tmpfs inside the sandbox
            "--tmpfs", str(self.data_dir),
        ]  # fmt: skip
        for parent in reversed(home.parents):
            if parent.is_relative_to(self.data_dir) and parent != self.data_dir:
                argv += ["--perms", "0755", "--dir", str(parent)]
        argv += ["--bind", str(home), str(home)]
        if spec.agent_path:
            agent_dir = str(Path(spec.agent_path).parent)
            argv += ["--bind", agent_dir, agent_dir]
        argv += [
            "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            "--die-with-parent", "--cap-drop", "ALL",
        ]  # fmt: skip
        inner = ["/bin/sh", "-c", 'cd "$HOME" && exec "$@"', "sh"]
        if spec.sudo:
            # root of its own user namespace: owns the workspace, nothing outside it
            inner += ["unshare", "--user", "--map-root-user", "--"]
        if not self.as_root:
            return [*argv, "--", *inner, *program]
        argv += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_SETPCAP"]
        drop = [
            "setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups",
            "--inh-caps=-all", "--bounding-set=-all", "--",
        ]  # fmt: skip
        return [*argv, "--", *drop, *inner, *program]

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
        env.update(spec.env)
        return env

    def _grant_agent(self, spec: SessionSpec) -> None:
        if spec.agent_path and self.as_root:
            path = Path(spec.agent_path)
            os.chown(path.parent, self.uid, self.gid)
            os.chown(path, self.uid, self.gid)

    def _spawn(
        self, argv: list[str], env: dict[str, str], home: Path, fds: tuple[int, int, int], tty: bool
    ) -> subprocess.Popen[bytes]:
        drop = self.bwrap is None and self.as_root
        return subprocess.Popen(
            argv,
            stdin=fds[0],
            stdout=fds[1],
            stderr=fds[2],
            env=env,
            cwd=home,
            start_new_session=True,
            preexec_fn=_take_terminal if tty else None,
            user=self.uid if drop else None,
            group=self.gid if drop else None,
            extra_groups=[] if drop else None,
        )

    async def open(self, spec: SessionSpec) -> LocalWorkload:
        home = self.home(spec.workspace)
        argv = self._argv(spec, home)
        env = self._env(spec, home)
        self._grant_agent(spec)
        if spec.term_type is not None and spec.subsystem is None:
            master, slave = pty.openpty()
            try:
                _set_winsize(slave, *spec.term_size)
                proc = self._spawn(argv, env, home, (slave, slave, slave), True)
            except BaseException:
                os.close(master)
                raise
            finally:
                os.close(slave)
            return LocalWorkload(proc, FdWriter(os.dup(master)), FdReader(master), None, master)
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        _grow_pipe(out_r)
        try:
            proc = self._spawn(argv, env, home, (in_r, out_w, err_w), False)
        except BaseException:
            for fd in (in_w, out_r, err_r):
                os.close(fd)
            raise
        finally:
            for fd in (in_r, out_w, err_w):
                os.close(fd)
        return LocalWorkload(proc, FdWriter(in_w), FdReader(out_r), FdReader(err_r), None)

"""The runtime interface: where a session's shell, command or subsystem actually runs.

One interface, several places: the Podman runtime (a container per workspace on this host), the
sandbox runtime (bubblewrap on this host), a Kubernetes Pod, an upstream sshd. The gateway asks a
runtime to :meth:`~WorkspaceBackend.open` a :class:`SessionSpec` and copies bytes between the
SSH channel and the returned :class:`Workload`; runtimes never see the SSH connection itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

__all__ = [
    "ExitStatus",
    "SessionSpec",
    "Workload",
    "WorkspaceBackend",
    "shared_session",
    "without_credentials",
]


@dataclass(frozen=True, slots=True)
class SessionSpec:
    """Everything a runtime needs to start one session, decided before it is called."""

    session_id: str
    username: str
    workspace: str
    workspace_config: Mapping[str, Any]
    """The workspace's stored configuration; runtimes read ``owner`` (the owning user's name)
    from it to tell a shared session (someone else's workspace) from the owner's."""
    command: str | None = None
    """The exec command; ``None`` with no ``subsystem`` means an interactive shell."""
    subsystem: str | None = None
    """A subsystem name (``sftp``)."""
    term_type: str | None = None
    """The PTY's terminal type; ``None`` when the client asked for no PTY."""
    term_size: tuple[int, int, int, int] = (80, 24, 0, 0)
    """Columns, rows, pixel width, pixel height."""
    env: Mapping[str, str] = field(default_factory=dict)
    """Variables to set (``STOCKADE_TOKEN``, ``STOCKADE_API``, accepted client variables)."""
    agent_path: str | None = None
    """The forwarded agent's socket on this host, when forwarding was requested and allowed."""
    sudo: bool = False
    """The ``sudo`` obligation: the session may act as root inside its workspace."""
    uid: int | None = None
    """The workspace's uid (see :class:`~stockade.workspace.UidAllocator`); ``None``: the runtime
    allocates or looks it up by workspace name."""
    credential_socket: str | None = None
    """A unix socket on this host that serves the session's credentials (the broker or gateway
    knows the session behind it). Runtimes make it reachable inside the session's container or
    sandbox, to that session only, and set ``STOCKADE_SOCKET`` to its path there."""
    blueprint: Mapping[str, Any] | None = None
    """The resolved blueprint (:meth:`~stockade.workspace.Blueprint.model_dump` by alias) the
    workspace runs; ``None``: the default blueprint."""
    client: tuple[str, int, str, int] | None = None
    """Client address and port, server address and port: the ``SSH_CONNECTION`` and
    ``SSH_CLIENT`` variables are derived from it, as sshd sets them."""


def shared_session(spec: SessionSpec, owner: str | None = None) -> bool:
    """Whether ``spec`` is a session of someone other than the workspace's owner (an admin
    entering another user's workspace). Such a session runs under the workspace's uid, the
    owner's: the owner can ptrace its processes (``PTRACE_ATTACH``, ``/proc/PID/mem``) and plant
    what its shell and programs run (``~/.profile``, ``~/.gitconfig``), so anything the session
    holds is the owner's too. ``owner``: the owner the runtime itself recorded (a running Pod's);
    an unknown owner counts as shared (fail closed)."""
    configured = spec.workspace_config.get("owner")
    if not isinstance(configured, str) or configured != spec.username:
        return True
    return owner is not None and owner != spec.username


def without_credentials(spec: SessionSpec) -> SessionSpec:
    """``spec`` carrying none of its user's credentials: no ``STOCKADE_TOKEN`` in the
    environment, no credential socket, no forwarded agent (what a :func:`shared_session` gets;
    the session itself still runs)."""
    env = {k: v for k, v in spec.env.items() if k != "STOCKADE_TOKEN"}
    return replace(spec, env=env, credential_socket=None, agent_path=None)


@dataclass(frozen=True, slots=True)
class ExitStatus:
    """How a session's program ended: an exit code, or the name of the signal that killed it."""

    code: int | None = None
    signal: str | None = None


class Workload(Protocol):
    """A running session. Reads return ``b""`` at end of stream."""

    async def read_stdout(self) -> bytes: ...

    async def read_stderr(self) -> bytes: ...

    async def write_stdin(self, data: bytes) -> None: ...

    async def close_stdin(self) -> None: ...

    def resize(self, columns: int, rows: int, width: int, height: int) -> None: ...

    def signal(self, name: str) -> None: ...

    async def wait(self) -> ExitStatus: ...

    async def close(self) -> None:
        """Stop the session if it still runs and release everything it holds (idempotent)."""
        ...


class WorkspaceBackend(Protocol):
    """Starts sessions in one kind of workspace."""

    name: str

    async def open(self, spec: SessionSpec) -> Workload: ...

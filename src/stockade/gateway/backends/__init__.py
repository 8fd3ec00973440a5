"""Workspace backends: where a session's shell, command or subsystem actually runs.

One interface, several places: :mod:`.local` (a sandbox on this host), :mod:`.ssh` (an upstream
sshd); a Kubernetes backend plugs in the same way. The gateway asks a backend to
:meth:`~WorkspaceBackend.open` a :class:`SessionSpec` and copies bytes between the SSH channel and
the returned :class:`Workload`; backends never see the SSH connection itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["ExitStatus", "SessionSpec", "Workload", "WorkspaceBackend"]


@dataclass(frozen=True, slots=True)
class SessionSpec:
    """Everything a backend needs to start one session, decided before it is called."""

    session_id: str
    username: str
    workspace: str
    workspace_config: Mapping[str, Any]
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

"""Workspace backends: where a session's shell, command or subsystem actually runs.

One interface, several places: :mod:`.local` (a sandbox on this host), :mod:`.ssh` (an upstream
sshd), the Podman and Kubernetes runtimes of :mod:`stockade.workspace`. The interface itself
(:class:`SessionSpec`, :class:`Workload`, ...) lives in :mod:`stockade.workspace` and is
re-exported here; backends never see the SSH connection itself.
"""

from __future__ import annotations

from stockade.workspace import (
    ExitStatus,
    SessionSpec,
    Workload,
    WorkspaceBackend,
    shared_session,
)

__all__ = ["ExitStatus", "SessionSpec", "Workload", "WorkspaceBackend", "shared_session"]

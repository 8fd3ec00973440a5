"""Which runtime runs workspaces on this host (``workspace.runtime`` in the settings)."""

from __future__ import annotations

import shutil
from typing import Literal

from stockade.core.errors import ToolMissing

__all__ = ["select_runtime"]


def select_runtime(choice: Literal["auto", "podman", "sandbox"]) -> Literal["podman", "sandbox"]:
    """``podman`` or ``sandbox`` for ``choice``; ``auto`` prefers Podman (with runc), then
    bubblewrap. A choice whose programs are missing, or ``auto`` with neither, raises
    :class:`ToolMissing` naming what to install: there is no unsandboxed fallback."""
    podman = shutil.which("podman") is not None and shutil.which("runc") is not None
    bwrap = shutil.which("bwrap") is not None
    if choice == "podman" or (choice == "auto" and podman):
        if not podman:
            raise ToolMissing("podman", "podman runc busybox-static")
        return "podman"
    if not bwrap:
        package = "bubblewrap" if choice == "sandbox" else "podman runc (or bubblewrap)"
        raise ToolMissing("podman or bwrap" if choice == "auto" else "bwrap", package)
    return "sandbox"

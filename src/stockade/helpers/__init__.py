"""Credential helpers for git, Docker and kubectl inside Stockade sessions.

Two implementations of one protocol, with the same messages and exit codes:

- the **static helper**, one static-pie executable (Rust, standard library only; sources in
  ``rust/``, built by ``make venv``) that acts as ``git-credential-stockade``,
  ``docker-credential-stockade`` or ``kubectl-credential-stockade`` by the name it is called
  by, or by its first argument (``stockade-credential-helper git get``). It needs nothing from
  the workspace image and speaks plain HTTP/1.1 over the unix socket named by
  ``STOCKADE_CREDENTIAL_SOCKET``. :func:`static_helper` finds it.
- the **Python fallback** (:mod:`stockade.helpers._fallback`, standard library only; the console
  scripts of the same names, and a file :func:`fallback_source` that runs alone with ``python3
  -I -S``), which also reaches the broker over TLS (``STOCKADE_API`` + ``STOCKADE_TOKEN``).

Importing this package costs only the standard library: helpers start on every git call.
"""

from __future__ import annotations

import os

from ._fallback import docker_main, git_main, kubectl_main

TYPE_CHECKING = False  # typing costs milliseconds the helpers do not have
if TYPE_CHECKING:
    from pathlib import Path

__all__ = [
    "HELPER_NAMES",
    "STATIC_HELPER",
    "docker_main",
    "fallback_source",
    "git_main",
    "kubectl_main",
    "static_helper",
]

#: File name of the static helper.
STATIC_HELPER = "stockade-credential-helper"
#: The names git, Docker and kubectl call a helper by (each a link to the static helper).
HELPER_NAMES = (
    "git-credential-stockade",
    "docker-credential-stockade",
    "kubectl-credential-stockade",
)
#: Overrides where :func:`static_helper` looks (an absolute file path).
_ENV_OVERRIDE = "STOCKADE_STATIC_HELPER"


def static_helper() -> Path | None:
    """The static helper executable: ``$STOCKADE_STATIC_HELPER`` when set, else the one
    ``make venv`` builds into this package's ``bin/``; ``None`` when it is not built."""
    from pathlib import Path

    override = os.environ.get(_ENV_OVERRIDE)
    candidate = Path(override) if override else Path(__file__).with_name("bin") / STATIC_HELPER
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return candidate
    return None


def fallback_source() -> Path:
    """The Python fallback helpers as one file that needs only the standard library (copied
    into workspace homes and run as ``python3 -I -S FILE {git|docker|kubectl} ARGS``)."""
    from pathlib import Path

    return Path(__file__).with_name("_fallback.py")


del TYPE_CHECKING

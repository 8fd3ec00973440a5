"""The ``local`` backend is the sandbox runtime of :mod:`stockade.workspace`; re-exported here."""

from stockade.workspace import SFTP_SERVER, HomeHook, LocalWorkload, SandboxBackend

LocalBackend = SandboxBackend

__all__ = ["SFTP_SERVER", "HomeHook", "LocalBackend", "LocalWorkload"]

"""The data dir and the signing keys in it, for every command that opens the store (cheap to
import: admin commands use it without loading ``stockade up``'s composition root)."""

from __future__ import annotations

import os
from pathlib import Path

from stockade.core import Settings
from stockade.identity import KeyRing

__all__ = ["keyring_for", "prepare_data_dir"]


def prepare_data_dir(settings: Settings) -> Path:
    """Create the data dir (0700) and make every file this process creates private (umask 077):
    database, keys, recordings and sockets hold secrets or audit data."""
    os.umask(0o077)
    data_dir = settings.data_dir
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(data_dir, 0o700)
    return data_dir


def keyring_for(settings: Settings) -> KeyRing:
    """The JWT signing keys in the data dir."""
    return KeyRing(
        settings.data_dir / "keys",
        algorithm=settings.identity.algorithm,
        leeway=settings.identity.leeway,
    )

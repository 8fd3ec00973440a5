"""Shared values of the supply-chain tests (importable: pytest puts this directory on sys.path)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PASSWORD = "correct horse"


@dataclass(frozen=True)
class Pki:
    """A CA and code-signing PFX files made for the test session."""

    ca_pem: Path
    pfx: Path
    expired_pfx: Path
    server_pfx: Path
    other_ca_pem: Path
    other_pfx: Path


@dataclass(frozen=True)
class Binaries:
    """Real Windows binaries built for the session."""

    exe: Path
    dll: Path
    msi: Path

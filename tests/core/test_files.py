"""write_private: secret files are private from the first byte and never torn."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from stockade.core import write_private


def test_private_mode_and_parent_created(tmp_path: Path) -> None:
    target = tmp_path / "keys" / "signing.pem"
    write_private(target, b"secret")
    assert target.read_bytes() == b"secret"
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(target.parent).st_mode) == 0o700
    write_private(target, b"public", mode=0o644)
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o644


def test_replaces_atomically_without_leftovers(tmp_path: Path) -> None:
    target = tmp_path / "index.json"
    write_private(target, b"old")
    write_private(target, b"new")
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.json"]


def test_a_symlink_is_replaced_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"untouched")
    link = tmp_path / "token"
    link.symlink_to(victim)
    write_private(link, b"token")
    assert victim.read_bytes() == b"untouched"
    assert not link.is_symlink()
    assert link.read_bytes() == b"token"

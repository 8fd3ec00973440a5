"""The suite's leak scan (``files_holding``) finds what it looks for, in sparse files too."""

from __future__ import annotations

import os
from pathlib import Path

from tests.conftest import _holds, files_holding


def test_a_needle_past_a_hole_and_across_reads_is_found(tmp_path: Path) -> None:
    image = tmp_path / "home.img"
    with image.open("wb") as file:
        file.truncate(1 << 30)  # a GiB, all hole
        file.seek(700 << 20)
        file.write(b"x" * 10 + b"pw-secret" + b"y" * 10)
    assert files_holding(tmp_path, b"pw-secret") == [str(image)]
    assert files_holding(tmp_path, b"pw-other") == []
    split = tmp_path / "split.bin"
    split.write_bytes(b"a" * 1000 + b"pw-secret")
    assert _holds(split, b"pw-secret", chunk=1003)  # the needle straddles two reads


def test_skipped_parts_and_symlinks_are_not_read(tmp_path: Path) -> None:
    (tmp_path / "podman").mkdir()
    (tmp_path / "podman" / "layer").write_bytes(b"pw-secret")
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.write_bytes(b"pw-secret")
    os.symlink(outside, tmp_path / "link")
    try:
        assert files_holding(tmp_path, b"pw-secret", skip=("podman",)) == []
        assert files_holding(tmp_path, b"pw-secret") == [str(tmp_path / "podman" / "layer")]
    finally:
        outside.unlink()

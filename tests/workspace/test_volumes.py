"""Sized volumes on the host, without a Pod (real ext4 images, loop devices and mounts): the
claim's life from a plain-directory home to its purge, and the refusals on the way."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from stockade.core.errors import BackendError, InvalidInput
from stockade.workspace import check_home
from stockade.workspace._volumes import (
    HostVolume,
    loop_device_of,
    mounted_at,
    prepare_claim,
    prepare_empty_dir,
    unmount_below,
)
from tests.conftest import IN_CI

pytestmark = [
    pytest.mark.root,
    pytest.mark.serial,
    pytest.mark.skipif(os.geteuid() != 0 and not IN_CI, reason="loop mounts need root"),
]
UID = 200321


@pytest.fixture
def base(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    unmount_below(tmp_path)


def _claim(base: Path, size: int = 16 << 20) -> HostVolume:
    return HostVolume(
        path=base / "homes" / "x" / "w-home", mode=0o700, size=size,
        field="storages[0].size", kind="claim",
    )  # fmt: skip


def _df_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_blocks * st.f_frsize


def _fill(path: Path, size: int) -> None:
    with open(path, "wb") as handle:
        handle.write(b"\0" * size)
        handle.flush()
        os.fsync(handle.fileno())


def test_a_claims_life(base: Path) -> None:
    """Migrated from a plain directory, mounted once however often it is prepared, grown,
    never shrunk, unmounted with its loop device released, and purged with the home."""
    claim = _claim(base)
    claim.path.mkdir(parents=True)
    (claim.path / "notes").write_text("kept")
    (claim.path / "sub").mkdir()
    os.link(claim.path / "notes", claim.path / "sub" / "link")
    os.chown(claim.path / "notes", UID, UID)
    prepare_claim(claim, UID, base / "pristine")
    assert (mounted_at(claim.path) or ("", ""))[1] == "ext4"
    assert (claim.path / "notes").read_text() == "kept"
    assert (claim.path / "notes").stat().st_uid == UID
    assert (claim.path / "notes").stat().st_ino == (claim.path / "sub" / "link").stat().st_ino
    assert (claim.path.stat().st_uid, claim.path.stat().st_mode & 0o7777) == (UID, 0o700)
    assert not claim.path.with_name("w-home.premigration").exists()
    assert claim.image.stat().st_mode & 0o777 == 0o600
    loop = loop_device_of(claim.image)
    prepare_claim(claim, UID, base / "pristine")  # again (a new runtime): the same mount
    assert loop_device_of(claim.image) == loop
    assert sum(1 for p in Path("/proc/self/mountinfo").read_text().splitlines()
               if f" {claim.path} " in p) == 1  # fmt: skip
    with pytest.raises(InvalidInput, match=r"^storages\[0\]\.size: .*never shrink"):
        prepare_claim(_claim(base, 8 << 20), UID, base / "pristine")
    prepare_claim(_claim(base, 40 << 20), UID, base / "pristine")  # grown (offline)
    assert _df_bytes(claim.path) > 32 << 20
    assert (claim.path / "notes").read_text() == "kept"
    unmount_below(claim.path)
    assert mounted_at(claim.path) is None
    assert loop_device_of(claim.image) is None
    prepare_claim(_claim(base, 40 << 20), UID, base / "pristine")
    home = claim.path.parent
    check_home(home, "new", owner_id="someone", choice="purge")  # mounted: unmounted, gone
    assert not home.exists()
    assert loop_device_of(claim.image) is None


def test_a_home_larger_than_its_claim_is_not_migrated(base: Path) -> None:
    claim = _claim(base)
    claim.path.mkdir(parents=True)
    with open(claim.path / "big", "wb") as handle:
        handle.truncate(32 << 20)  # its apparent size counts
    with pytest.raises(InvalidInput, match=r"^storages\[0\]\.size: .*raise storages"):
        prepare_claim(claim, UID, base / "pristine")
    assert (claim.path.with_name("w-home.premigration") / "big").is_file()  # kept
    assert not claim.image.exists()


def test_an_empty_dir_is_fresh_bounded_and_refuses_to_mount_twice(base: Path) -> None:
    tmp = HostVolume(path=base / "volumes" / "tmp", mode=0o1777, size=8 << 20, field="f")
    prepare_empty_dir(tmp, UID, base / "pristine")
    assert (tmp.path.stat().st_uid, tmp.path.stat().st_mode & 0o7777) == (0, 0o1777)
    assert 4 << 20 < _df_bytes(tmp.path) <= 8 << 20
    with pytest.raises(OSError, match="No space"):
        _fill(tmp.path / "fill", 9 << 20)
    with pytest.raises(BackendError, match="still mounted"):
        prepare_empty_dir(tmp, UID, base / "pristine")
    memory = HostVolume(path=base / "volumes" / "m", mode=0o755, size=4 << 20, field="g",
                        kind="memory")  # fmt: skip
    prepare_empty_dir(memory, UID, base / "pristine")
    assert (mounted_at(memory.path) or ("", ""))[1] == "tmpfs"
    assert _df_bytes(memory.path) == 4 << 20

"""Sized volumes for the Podman runtime: what Kubernetes enforces itself, enforced on this host.

In a cluster a claim is a volume of its ``storage`` size and an ``emptyDir`` is evicted past its
``sizeLimit``. Rootful Podman has neither: a ``hostPath`` is the gateway host's filesystem, so a
session could fill the host's disk through ``$HOME`` or ``/tmp``. Here each of them is its own
filesystem of exactly its size, mounted on the host and bind-mounted into the Pod:

- a **claim** is a sparse image file (``<claim>.img``, root 0600) holding ext4 (no blocks
  reserved for root, so the whole size is the session's), loop-mounted ``nosuid,nodev`` at
  ``<claim>``. It persists: unmounted when the Pod stops, found mounted or mounted again by the
  next runtime, never attached to two loop devices (two kernels' views of one ext4 would corrupt
  it: an image already on a loop device is mounted from that device, which shares its
  superblock). A claim that grows is resized when its Pod starts (``e2fsck``, ``resize2fs``);
  one that shrinks is refused, as Kubernetes refuses it. Blocks and inodes are both the
  image's: neither many small files nor hard links (``EXDEV`` across filesystems) reach the
  host's.
- an **emptyDir** of ``medium: Memory`` is a tmpfs of its ``sizeLimit``; any other is an image
  like a claim's, made fresh for each Pod and removed with it.

A new image (a claim's or an emptyDir's) is a sparse copy of a pristine one of that size, made
once by ``mkfs``; the loop device and the mount are set up with ioctls and mount(2), so a cold
start runs no tool at all (``mount``, ``mkfs.ext4``, ``resize2fs`` and ``e2fsck`` are for the
rare paths: a first image of a size, a grown claim, an error to explain).

Everything fails closed: a volume that cannot be made or mounted raises a one-line
:class:`BackendError` saying what to install or fix, and the Pod is not started.

A plain-directory home from before sized claims is **migrated** on its next start: moved aside
(``<claim>.premigration``), copied into a new image (``cp -a``: owners, modes, links), and only
once the image is complete (renamed into place) is the old directory removed. Each step can be
interrupted and redone. A home holding more than its claim is refused, naming the field.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import re
import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

from stockade.core.errors import BackendError, InvalidInput, ToolMissing
from stockade.core.logging import get_logger

__all__ = [
    "HostVolume",
    "loop_device_of",
    "mounted_at",
    "parse_quantity",
    "prepare_claim",
    "prepare_empty_dir",
    "require_volume_tools",
    "unmount_below",
]

_log = get_logger("stockade.workspace.volumes")
_UNITS = {
    "": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
}  # fmt: skip
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(m|k|Ki|M|Mi|G|Gi|T|Ti)?$")
#: ext4 needs room for its metadata and journal; below this mkfs fails or leaves nothing usable.
MIN_SIZE = 4 * 2**20
_MKFS_OPTIONS = ["-q", "-F", "-m", "0", "-E", "nodiscard,lazy_itable_init=1,lazy_journal_init=1"]
_MOUNT_OPTIONS = "nosuid,nodev"


_LOOP_CTL_GET_FREE = 0x4C82
_LOOP_CONFIGURE = 0x4C0A
_LO_FLAGS_AUTOCLEAR = 4
_MS_NOSUID, _MS_NODEV = 2, 4
_MNT_DETACH = 2
_libc = ctypes.CDLL(None, use_errno=True)


def _sys_mount(source: str, target: Path, fstype: str, data: str | None = None) -> None:
    """mount(2), ``nosuid,nodev``: no mount(8) process on the cold-start path."""
    done = _libc.mount(
        source.encode(), str(target).encode(), fstype.encode(), _MS_NOSUID | _MS_NODEV,
        None if data is None else data.encode(),
    )  # fmt: skip
    if done != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(target))


def _loop_mount(image: Path, target: Path) -> None:
    """``mount -o loop`` done with ioctls: a free loop device configured on ``image`` with
    autoclear (released with its last mount), mounted as ext4. The device's descriptor is held
    until the mount holds it (closing it first would clear it). Raises OSError."""
    with open("/dev/loop-control", "rb", buffering=0) as control:
        for _ in range(8):  # another process may take the free device first: EBUSY, again
            number = fcntl.ioctl(control, _LOOP_CTL_GET_FREE)
            fd = os.open(image, os.O_RDWR | os.O_CLOEXEC)
            try:
                loop = os.open(f"/dev/loop{number}", os.O_RDWR | os.O_CLOEXEC)
            except OSError:
                os.close(fd)
                raise
            try:
                info = struct.pack("<5Q4I64s64s32s2Q", 0, 0, 0, 0, 0, 0, 0, 0,
                                   _LO_FLAGS_AUTOCLEAR, str(image).encode()[:63], b"", b"",
                                   0, 0)  # fmt: skip
                config = struct.pack("<II", fd, 0) + info + bytes(64)
                try:
                    fcntl.ioctl(loop, _LOOP_CONFIGURE, config)
                except OSError as exc:
                    if exc.errno == errno.EBUSY:
                        continue
                    raise
                _sys_mount(f"/dev/loop{number}", target, "ext4")
                return
            finally:
                os.close(loop)
                os.close(fd)
    raise OSError(errno.EBUSY, "no free loop device", str(image))


def parse_quantity(value: str, field: str) -> int:
    """Bytes of a Kubernetes quantity (``512Mi``, ``1G``, ``1.5Gi``), rounded up to 4 KiB."""
    match = _QUANTITY.match(value)
    if match is None or match.group(2) == "m":
        raise InvalidInput(field, f"{value!r} is not a size (e.g. 512Mi, 10Gi)")
    number = float(match.group(1)) * _UNITS[match.group(2) or ""]
    size = -(-int(number) // 4096) * 4096
    if size < MIN_SIZE:
        raise InvalidInput(field, f"{value!r} is smaller than the 4Mi a volume needs")
    return size


@dataclass(frozen=True, slots=True)
class HostVolume:
    """One volume of the Pod as the host prepares it."""

    path: Path
    """The host directory bind-mounted into the Pod (the mount point of the sized filesystem)."""
    mode: int
    """Mode of the filesystem's root: 1777 for ``/tmp``, 0700 for the home, else 0755."""
    size: int
    """Bytes: the claim's ``storage`` or the emptyDir's ``sizeLimit``."""
    field: str
    """Where the size comes from (``storages[0].size``), named in errors."""
    kind: str = "emptyDir"
    """``claim`` (persistent image), ``emptyDir`` (image per Pod) or ``memory`` (tmpfs)."""

    @property
    def image(self) -> Path:
        return self.path.with_name(self.path.name + ".img")


def require_volume_tools() -> None:
    """Raise :class:`ToolMissing` unless e2fsprogs (a first image of a size, a grown claim)
    and mount(8) (a failure's explanation, a device a Pod still holds) are here."""
    for program, package in (
        ("mkfs.ext4", "e2fsprogs"),
        ("resize2fs", "e2fsprogs"),
        ("e2fsck", "e2fsprogs"),
        ("mount", "mount"),
    ):
        if _which(program) is None:
            raise ToolMissing(program, package)


def _which(program: str) -> str | None:
    return shutil.which(program) or shutil.which(program, path="/usr/sbin:/sbin")


_PACKAGES = {"mount": "mount", "losetup": "mount", "cp": "coreutils"}


def _run(argv: list[str], what: str, fix: str = "") -> None:
    binary = _which(argv[0])
    if binary is None:
        raise ToolMissing(argv[0], _PACKAGES.get(argv[0], "e2fsprogs"))
    done = subprocess.run([binary, *argv[1:]], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        detail = " ".join(done.stderr.split())[-300:] or f"exit status {done.returncode}"
        raise BackendError(f"{what}: {detail}{'; ' + fix if fix else ''}")


def _unescape(path: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), path)


def _mounts() -> list[tuple[str, str, str]]:
    """(mount point, major:minor, filesystem type) of this mount namespace, in mount order."""
    found = []
    with open("/proc/self/mountinfo") as handle:
        for line in handle:
            left, _, right = line.partition(" - ")
            parts = left.split()
            found.append((_unescape(parts[4]), parts[2], right.split()[0] if right else ""))
    return found


def mounted_at(path: Path) -> tuple[str, str] | None:
    """(major:minor, filesystem type) of what is mounted at ``path`` (the topmost), or None."""
    target = str(path)
    hits = [(dev, fstype) for point, dev, fstype in _mounts() if point == target]
    return hits[-1] if hits else None


def loop_device_of(image: Path) -> tuple[str, str] | None:
    """(``/dev/loopN``, major:minor) of the loop device ``image`` is attached to, or None."""
    target = str(image)
    for block in Path("/sys/block").glob("loop*"):
        with contextlib.suppress(OSError):
            if (block / "loop" / "backing_file").read_text().rstrip("\n") == target:
                return f"/dev/{block.name}", (block / "dev").read_text().strip()
    return None


def _umount(path: Path) -> None:
    if _libc.umount2(str(path).encode(), 0) == 0:
        return
    code = ctypes.get_errno()
    if mounted_at(path) is not None:
        # busy (a process of ours has a file open there): detach it now, freed when let go
        _log.warning("volume_busy_detached", path=str(path), error=os.strerror(code))
        _libc.umount2(str(path).encode(), _MNT_DETACH)


def unmount_below(path: Path) -> None:
    """Unmount everything mounted at or under ``path``, deepest first (a loop device set up by
    ``mount -o loop`` is released with its last mount)."""
    root = str(path.resolve()) if path.exists() else str(path)
    points = {p for p, _, _ in _mounts() if p == root or p.startswith(root.rstrip("/") + "/")}
    for point in sorted(points, key=len, reverse=True):
        _umount(Path(point))


def _mkfs(image: Path, size: int, field: str) -> None:
    tmp = image.with_name(f"{image.name}.{os.getpid()}-{os.urandom(4).hex()}.tmp")
    with open(tmp, "wb") as handle:
        os.fchmod(handle.fileno(), 0o600)
        handle.truncate(size)
    try:
        _run(["mkfs.ext4", *_MKFS_OPTIONS, str(tmp)], f"{field}: making its filesystem failed")
        tmp.replace(image)
    finally:
        tmp.unlink(missing_ok=True)


def _mount(image: Path, mountpoint: Path, field: str) -> None:
    """Mount ``image`` at ``mountpoint`` unless it already is; never a second loop device."""
    loop = loop_device_of(image)
    current = mounted_at(mountpoint)
    if current is not None:
        if loop is not None and current[0] == loop[1]:
            return
        raise BackendError(
            f"{field}: {mountpoint} has another filesystem mounted ({current[1]} {current[0]});"
            f" unmount it (umount {mountpoint})"
        )
    fix = "the Podman runtime needs root and loop devices (modprobe loop; /dev/loop-control)"
    if loop is not None:  # attached already (a Pod still holds it): the same superblock
        _run(["mount", "-o", _MOUNT_OPTIONS, loop[0], str(mountpoint)], f"{field}: mount", fix)
        return
    try:
        _loop_mount(image, mountpoint)
    except OSError as exc:  # mount(8) again, for the message that says why
        _log.info("loop_mount_retried", path=str(mountpoint), error=str(exc))
        options = f"loop,{_MOUNT_OPTIONS}"
        _run(["mount", "-o", options, str(image), str(mountpoint)], f"{field}: mount", fix)


def _grow(image: Path, size: int, field: str, mountpoint: Path) -> None:
    """Grow the image to ``size`` offline (the Pod is not running: its mount, left by a crash,
    is taken down first; one still held elsewhere is refused): fsck, then resize2fs."""
    if image.stat().st_size >= size:
        return
    unmount_below(mountpoint)
    if loop_device_of(image) is not None:
        raise BackendError(
            f"{field}: {image} is still in use (on a loop device); stop what holds it first"
        )
    os.truncate(image, size)
    # exit 1 of e2fsck means "errors corrected": resize2fs insists on a freshly checked one
    binary = _which("e2fsck")
    if binary is None:
        raise ToolMissing("e2fsck", "e2fsprogs")
    done = subprocess.run([binary, "-f", "-p", str(image)], capture_output=True, text=True)
    if done.returncode not in (0, 1):
        detail = " ".join(done.stderr.split())[-300:]
        raise BackendError(f"{field}: the home's filesystem has errors (e2fsck: {detail})")
    _run(["resize2fs", str(image)], f"{field}: growing the filesystem failed")
    _log.info("claim_grown", path=str(mountpoint), size=size)


def _own_root(volume: HostVolume, uid: int) -> None:
    os.chown(volume.path, 0 if volume.mode == 0o1777 else uid, 0 if volume.mode == 0o1777 else uid)
    os.chmod(volume.path, volume.mode)


def _mountpoint(path: Path) -> None:
    """The host directory a volume mounts on: root's, 0700 (nothing writes there unmounted)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if mounted_at(path) is None:
        os.chown(path, 0, 0)
        path.chmod(0o700)


def _migrate(volume: HostVolume, field: str) -> None:
    """A plain-directory home (from before sized claims) copied into a new image: moved aside,
    copied, the image renamed into place, then the old directory removed. Redone if cut short."""
    image, old = volume.image, volume.path.with_name(volume.path.name + ".premigration")
    if image.exists():  # the image was completed: what is left aside is a copy
        if old.exists():
            shutil.rmtree(old)
        return
    if not old.exists():
        if not volume.path.is_dir() or mounted_at(volume.path) is not None:
            return
        if not any(volume.path.iterdir()):
            return
        volume.path.rename(old)
    staging = volume.path.with_name(volume.path.name + ".migrating")
    work = image.with_name(image.name + ".new")
    unmount_below(staging)
    used = sum(f.stat().st_size for f in old.rglob("*") if f.is_file() and not f.is_symlink())
    if used > volume.size:
        raise InvalidInput(
            field,
            f"the existing home {old} holds {used} bytes, more than the claim's {volume.size};"
            f" raise {field} or free space there",
        )
    _mkfs(work, volume.size, field)
    staging.mkdir(exist_ok=True, mode=0o700)
    _run(["mount", "-o", f"loop,{_MOUNT_OPTIONS}", str(work), str(staging)], f"{field}: mount")
    try:
        _run(["cp", "-a", f"{old}/.", f"{staging}/"], f"{field}: copying the old home failed")
        st = old.stat()
        os.chown(staging, st.st_uid, st.st_gid)
    finally:
        _umount(staging)
    staging.rmdir()
    work.replace(image)
    shutil.rmtree(old)
    _log.info("home_migrated", path=str(volume.path), size=volume.size)


def prepare_claim(volume: HostVolume, uid: int, pristine_dir: Path) -> None:
    """The claim's image (made, migrated, or found), mounted once at ``volume.path``, grown to
    ``volume.size`` if it was smaller, its root owned by ``uid``. A smaller claim than the
    image is refused (:class:`InvalidInput` naming the field): shrinking would lose data."""
    image = volume.image
    if image.exists() and image.stat().st_size > volume.size:
        raise InvalidInput(
            volume.field,
            f"the claim is {volume.size} bytes but its home is already {image.stat().st_size};"
            " a claim can grow, never shrink",
        )
    volume.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    _migrate(volume, volume.field)
    fresh = not image.exists()
    if fresh:
        _copy_pristine(image, volume.size, volume.field, pristine_dir)
    _grow(image, volume.size, volume.field, volume.path)
    _mountpoint(volume.path)
    _mount(image, volume.path, volume.field)
    if fresh:
        with contextlib.suppress(OSError):
            (volume.path / "lost+found").rmdir()  # e2fsck makes it again when it needs it
    _own_root(volume, uid)


def _copy_pristine(image: Path, size: int, field: str, pristine_dir: Path) -> None:
    """A fresh ext4 of ``size`` at ``image``: a sparse copy of one ``mkfs`` made once per size
    (a copy of its few allocated blocks is far cheaper than ``mkfs``; the copies share the
    filesystem UUID, which nothing here mounts by)."""
    pristine = pristine_dir / f"ext4-{size}.img"
    if not pristine.exists():
        pristine_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        _mkfs(pristine, size, field)
    tmp = image.with_name(f"{image.name}.{os.getpid()}-{os.urandom(4).hex()}.tmp")
    try:
        _sparse_copy(pristine, tmp, size)
        tmp.replace(image)
    except OSError as exc:
        raise BackendError(f"{field}: copying a fresh image failed: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)


def _sparse_copy(source: Path, dest: Path, size: int) -> None:
    """Copy only the allocated extents of ``source`` (``SEEK_DATA``/``SEEK_HOLE``), in the
    kernel (``copy_file_range``); the rest of ``dest`` stays a hole. ``dest`` is 0600."""
    with open(source, "rb") as src, open(dest, "xb") as dst:
        os.fchmod(dst.fileno(), 0o600)
        dst.truncate(size)
        offset = 0
        while offset < size:  # each turn moves past one extent
            try:
                data = os.lseek(src.fileno(), offset, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # no data after offset
                    return
                raise
            hole = os.lseek(src.fileno(), data, os.SEEK_HOLE)
            position = data
            while position < hole:
                copied = os.copy_file_range(
                    src.fileno(), dst.fileno(), hole - position, position, position
                )
                if copied <= 0:
                    raise OSError(errno.EIO, "short copy", str(source))
                position += copied
            offset = hole


def prepare_empty_dir(volume: HostVolume, uid: int, pristine_dir: Path) -> None:
    """A fresh sized filesystem at ``volume.path`` for one Pod: a tmpfs (``memory``) or a
    sparse copy of a pristine image of that size (``mkfs`` runs once per size)."""
    _mountpoint(volume.path)
    if mounted_at(volume.path) is not None:
        raise BackendError(f"{volume.field}: {volume.path} is still mounted from an earlier Pod")
    if volume.kind == "memory":
        try:
            _sys_mount("tmpfs", volume.path, "tmpfs", f"size={volume.size},mode=0700")
        except OSError as exc:
            raise BackendError(f"{volume.field}: mounting a tmpfs failed: {exc}") from exc
    else:
        _copy_pristine(volume.image, volume.size, volume.field, pristine_dir)
        _mount(volume.image, volume.path, volume.field)
        with contextlib.suppress(OSError):
            (volume.path / "lost+found").rmdir()
    _own_root(volume, uid)

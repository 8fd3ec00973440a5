"""The sandbox's seccomp filter, run through a classic-BPF interpreter of our own: every
decision checked for the syscalls it names and for the ones it must let through."""

from __future__ import annotations

import errno
import re
import struct
from pathlib import Path

import pytest

from stockade.workspace import _podman
from stockade.workspace._seccomp import (
    CLONE_NS_FLAGS,
    DENIED_SYSCALLS,
    RET_ALLOW,
    RET_ERRNO,
    RET_KILL_PROCESS,
    sandbox_filter,
)

X86_64 = 0xC000003E
I386 = 0x40000003
EPERM = RET_ERRNO | errno.EPERM
UNISTD = Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h")


def run(program: bytes, nr: int, *, arch: int = X86_64, arg0: int = 0) -> int:
    """The filter's verdict for one ``struct seccomp_data`` (classic BPF as the kernel runs
    it: absolute word loads, jumps relative to the next instruction, ALU and, return)."""
    data = struct.pack("<iIQ6Q", nr, arch, 0, arg0, 0, 0, 0, 0, 0)
    insns = [struct.unpack_from("<HBBI", program, i) for i in range(0, len(program), 8)]
    assert len(insns) <= 4096
    acc, pc = 0, 0
    for _ in range(len(insns)):  # no backward jumps in classic BPF: bounded
        code, jt, jf, k = insns[pc]
        if code == 0x20:
            acc = struct.unpack_from("<I", data, k)[0]
            pc += 1
        elif code in (0x15, 0x35, 0x45):
            taken = {0x15: acc == k, 0x35: acc >= k, 0x45: bool(acc & k)}[code]
            pc += 1 + (jt if taken else jf)
        elif code == 0x06:
            return int(k)
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")
    raise AssertionError("fell off the program")


@pytest.mark.parametrize("sudo", [False, True])
def test_every_named_syscall_is_refused_and_others_pass(sudo: bool) -> None:
    program = sandbox_filter(allow_user_namespace=sudo)
    for name, nr in DENIED_SYSCALLS.items():
        if not (sudo and name == "unshare"):
            assert run(program, nr) == EPERM, name
    for nr in (0, 1, 2, 57, 58, 59, 60, 231, 257):  # read write open fork vfork execve exit ...
        assert run(program, nr) == RET_ALLOW, nr
    assert run(program, 435) == RET_ERRNO | errno.ENOSYS  # clone3: libc falls back to clone
    assert run(program, 56, arg0=0x01200011) == RET_ALLOW  # fork()'s clone
    assert run(program, 56, arg0=0x00010F00 | 17) == RET_ALLOW  # a thread
    for flag in (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000):
        assert run(program, 56, arg0=flag | 17) == EPERM, hex(flag)
        assert run(program, 56, arg0=(1 << 40) | flag) == EPERM, hex(flag)
    assert CLONE_NS_FLAGS & 0x40000000  # CLONE_NEWNET


def test_foreign_abis_are_killed() -> None:
    program = sandbox_filter()
    assert run(program, 0, arch=I386) == RET_KILL_PROCESS  # int 0x80: numbers mean other calls
    assert run(program, 0x40000000 | 101) == RET_KILL_PROCESS  # x32 ptrace
    assert run(program, 0x40000000) == RET_KILL_PROCESS


def test_sudo_allows_exactly_a_user_namespace() -> None:
    sudo, plain = sandbox_filter(allow_user_namespace=True), sandbox_filter()
    assert run(sudo, 272, arg0=0x10000000) == RET_ALLOW
    assert run(plain, 272, arg0=0x10000000) == EPERM
    for other in (0x10000000 | 0x00020000, 0x40000000, 0x00020000, 0, 0x80):
        assert run(sudo, 272, arg0=other) == EPERM, hex(other)
    assert run(sudo, 272, arg0=(1 << 32) | 0x10000000) == EPERM
    assert run(sudo, 308) == EPERM  # setns stays refused


def test_numbers_are_the_x86_64_ones() -> None:
    assert UNISTD.is_file(), "needs the kernel headers (linux-libc-dev)"
    table = dict(re.findall(r"#define __NR_(\w+) (\d+)", UNISTD.read_text()))
    assert {name: int(table[name]) for name in DENIED_SYSCALLS} == DENIED_SYSCALLS
    assert (int(table["clone"]), int(table["clone3"])) == (56, 435)


def test_the_container_profiles_refusals_are_refused_here_too() -> None:
    """Consistent with the Podman runtime's profile (``umount`` has no x86_64 number)."""
    assert _podman._SECCOMP_DENIED - {"clone3", "umount"} <= set(DENIED_SYSCALLS)
    assert _podman._CLONE_NS_FLAGS & ~CLONE_NS_FLAGS == 0

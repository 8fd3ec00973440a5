"""The sandbox's seccomp filter: a classic-BPF program for bubblewrap's ``--seccomp FD``.

Built here in pure Python (no libseccomp): a short deny list, the same choice as the Podman
runtime's profile (:func:`~stockade.workspace.workspace_seccomp`: what Kubernetes'
``RuntimeDefault`` refuses a container without ``CAP_SYS_ADMIN``) plus what reaches other
processes or the kernel directly:

- new namespaces and entering them: ``unshare``, ``setns``, ``clone`` with a namespace flag
  (``EPERM``), ``clone3`` (``ENOSYS``, as Docker does: its flags live in memory a filter cannot
  read, and libc falls back to ``clone``);
- mounts: ``mount``, ``umount2``, ``pivot_root`` and the new mount API;
- other processes: ``ptrace``, ``process_vm_readv``/``writev`` (a workspace's sessions share
  its uid: without this one session could read another's memory);
- other processes' fds and memory through pidfds: ``pidfd_getfd``, ``process_madvise``;
- the kernel keyring, ``bpf``, ``perf_event_open``, ``userfaultfd``, ``kexec_*``, modules,
  ``open_by_handle_at``, ``io_uring_*`` (its operations are system calls this filter never
  sees, and the interface a long run of kernel exploits went through).

Everything else is allowed. Only the x86_64 ABI is understood: a syscall of any other
architecture (``int 0x80`` i386 calls, x32) would slip past the numbers, so it kills the
process. With the ``sudo`` obligation the session's own ``unshare --user --map-root-user`` is
the one namespace call allowed: ``unshare(CLONE_NEWUSER)`` exactly.
"""

from __future__ import annotations

import errno
import functools
import struct

__all__ = ["CLONE_NS_FLAGS", "DENIED_SYSCALLS", "SECCOMP_SUPPORTED", "sandbox_filter"]

#: x86_64 syscall numbers (``asm/unistd_64.h``) refused with ``EPERM``.
DENIED_SYSCALLS: dict[str, int] = {
    "ptrace": 101,
    "process_vm_readv": 310,
    "process_vm_writev": 311,
    "setns": 308,
    "unshare": 272,
    "mount": 165,
    "umount2": 166,
    "pivot_root": 155,
    "keyctl": 250,
    "add_key": 248,
    "request_key": 249,
    "bpf": 321,
    "perf_event_open": 298,
    "userfaultfd": 323,
    "kexec_load": 246,
    "kexec_file_load": 320,
    "init_module": 175,
    "finit_module": 313,
    "delete_module": 176,
    "open_by_handle_at": 304,
    # io_uring: a second system-call interface the filter never sees (its operations run in
    # kernel threads) and a large kernel surface; Podman's profile and RuntimeDefault leave it
    # out too
    "io_uring_setup": 425,
    "io_uring_enter": 426,
    "io_uring_register": 427,
    # what ptrace is refused for, by other calls: another process's fds and memory advice
    "pidfd_getfd": 438,
    "process_madvise": 440,
    "open_tree": 428,
    "move_mount": 429,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "fspick": 433,
    "mount_setattr": 442,
}
_CLONE = 56
_CLONE3 = 435
_UNSHARE = DENIED_SYSCALLS["unshare"]
#: CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET (NEWTIME, 0x80, is only
#: ``clone3``'s and ``unshare``'s: in ``clone`` the low byte is the exit signal).
CLONE_NS_FLAGS = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000
CLONE_NS_FLAGS |= 0x40000000
CLONE_NEWUSER = 0x10000000

AUDIT_ARCH_X86_64 = 0xC000003E
X32_SYSCALL_BIT = 0x40000000
#: The filter is written for this machine type (``os.uname().machine``) only.
SECCOMP_SUPPORTED = "x86_64"

RET_KILL_PROCESS = 0x80000000
RET_ERRNO = 0x00050000
RET_ALLOW = 0x7FFF0000

# classic BPF opcodes
_LD_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
_JEQ = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_JGE = 0x35  # BPF_JMP | BPF_JGE | BPF_K
_JSET = 0x45  # BPF_JMP | BPF_JSET | BPF_K
_RET = 0x06  # BPF_RET | BPF_K

# struct seccomp_data offsets
_NR, _ARCH, _ARG0_LOW, _ARG0_HIGH = 0, 4, 16, 20

_Insn = tuple[int, int, int, int]


def _ld(offset: int) -> _Insn:
    return (_LD_ABS, 0, 0, offset)


def _ret(value: int) -> _Insn:
    return (_RET, 0, 0, value)


def _jump(op: int, k: int, jt: int, jf: int) -> _Insn:
    return (op, jt, jf, k)


def _program(*, allow_user_namespace: bool) -> list[_Insn]:
    eperm = RET_ERRNO | errno.EPERM
    prog: list[_Insn] = [
        _ld(_ARCH),
        _jump(_JEQ, AUDIT_ARCH_X86_64, 1, 0),
        _ret(RET_KILL_PROCESS),  # a foreign ABI: its numbers mean other calls
        _ld(_NR),
        _jump(_JGE, X32_SYSCALL_BIT, 0, 1),
        _ret(RET_KILL_PROCESS),  # x32
    ]
    # clone: allowed without namespace flags (flags are args[0]; they all live in its low word)
    prog += [
        _jump(_JEQ, _CLONE, 0, 4),
        _ld(_ARG0_LOW),
        _jump(_JSET, CLONE_NS_FLAGS, 0, 1),
        _ret(eperm),
        _ret(RET_ALLOW),
    ]
    prog += [_jump(_JEQ, _CLONE3, 0, 1), _ret(RET_ERRNO | errno.ENOSYS)]
    if allow_user_namespace:  # unshare(CLONE_NEWUSER) and nothing more, for ``sudo``
        prog += [
            _jump(_JEQ, _UNSHARE, 0, 6),
            _ld(_ARG0_HIGH),
            _jump(_JEQ, 0, 0, 3),
            _ld(_ARG0_LOW),
            _jump(_JEQ, CLONE_NEWUSER, 0, 1),
            _ret(RET_ALLOW),
            _ret(eperm),
        ]
    for number in DENIED_SYSCALLS.values():
        prog += [_jump(_JEQ, number, 0, 1), _ret(eperm)]
    prog.append(_ret(RET_ALLOW))
    return prog


@functools.cache
def sandbox_filter(*, allow_user_namespace: bool = False) -> bytes:
    """The filter as ``struct sock_filter[]`` bytes (what ``bwrap --seccomp FD`` reads).
    ``allow_user_namespace``: the ``sudo`` obligation's ``unshare(CLONE_NEWUSER)``. Pure."""
    return b"".join(
        struct.pack("<HBBI", code, jt, jf, k)
        for code, jt, jf, k in _program(allow_user_namespace=allow_user_namespace)
    )

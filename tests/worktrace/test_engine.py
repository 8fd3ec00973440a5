"""Correlation, attack paths and rarity anomalies."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from stockade.worktrace import (
    AnomalyConfig,
    Engine,
    LocalSessions,
    SessionInfo,
    load_rules,
    rarity,
)

from .conftest import exec_event, kprobe_event, line, process

THREE = """\
rules:
  - {id: r1, confidence: 0.5, report: false, global: false, process: {binary: [one]}}
  - {id: r2, confidence: 0.6, report: false, global: false, process: {binary: [two]}}
  - {id: r3, confidence: 0.7, report: true, global: false, process: {binary: [three]}}
attack_paths:
  - {id: chain, name: Three steps, time_window: 10m, rules: [r1, r2, r3]}
  - {id: ordered-chain, time_window: 10m, rules: [r1, r2, r3], ordered: true}
"""


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    (tmp_path / "r.yaml").write_text(THREE)
    return Engine(load_rules(tmp_path), anomaly=AnomalyConfig(enabled=False))


def at(binary: str, second: int, **kw: Any) -> bytes:
    return line(
        exec_event(
            f"/usr/bin/{binary}", time=f"2026-12-01T10:{second // 60:02d}:{second % 60:02d}Z", **kw
        )
    )


def test_three_rules_within_the_window_score_one_minus_product(engine: Engine) -> None:
    assert engine.feed(at("one", 0)) == ()
    assert engine.feed(at("two", 60)) == ()
    alerts = engine.feed(at("three", 120))
    by_kind = {(a.kind, a.rule_id): a for a in alerts}
    path = by_kind[("attack_path", "chain")]
    expected = 1 - (1 - 0.5) * (1 - 0.6) * (1 - 0.7)
    assert path.confidence == pytest.approx(expected)  # 0.94
    assert path.rules == ["r1", "r2", "r3"]
    assert path.name == "Three steps"
    assert path.session.session_id == "s-0001"
    assert by_kind[("attack_path", "ordered-chain")].confidence == pytest.approx(expected)
    assert ("rule", "r3") in by_kind  # r3 reports on its own as well
    again = engine.feed(at("three", 130))  # the path starts over once it fired
    assert [a.kind for a in again] == ["rule"]


def test_a_step_outside_the_window_does_not_count(engine: Engine) -> None:
    engine.feed(at("one", 0))
    engine.feed(at("two", 300))
    alerts = engine.feed(at("three", 601 + 0))  # r1 is 601 s old: out of the 10 minutes
    assert [a.kind for a in alerts] == ["rule"]
    # a fresh r1 completes the path with r2 (310 s old) and r3 (9 s old)
    assert {a.rule_id for a in engine.feed(at("one", 610))} == {"chain"}


def test_order_matters_only_for_ordered_paths(engine: Engine) -> None:
    engine.feed(at("three", 0))
    engine.feed(at("two", 10))
    alerts = engine.feed(at("one", 20))
    assert {a.rule_id for a in alerts if a.kind == "attack_path"} == {"chain"}


def test_paths_do_not_mix_sessions(engine: Engine) -> None:
    other = {
        "stockade.dev/workspace": "ws-bob",
        "stockade.dev/user": "bob",
        "stockade.dev/session": "s-0002",
    }
    engine.feed(at("one", 0))
    engine.feed(at("two", 10, labels=other))
    assert {a.kind for a in engine.feed(at("three", 20))} == {"rule"}


def test_rarity_formula() -> None:
    assert rarity(0) == 1.0
    assert rarity(1) == pytest.approx(1 / (1 + math.log(2)))
    assert rarity(100) == pytest.approx(1 / (1 + math.log(101)))


def test_rare_ancestry_alerts_only_after_learning(tmp_path: Path) -> None:
    (tmp_path / "none.yaml").write_text("rules: []\n")
    engine = Engine(load_rules(tmp_path), anomaly=AnomalyConfig(learning_events=3, threshold=0.5))
    common = line(exec_event("/usr/bin/python3"))
    for _ in range(3):
        assert engine.feed(common) == ()  # learning: counted, never alerted
    assert engine.feed(common) == ()  # seen 3 times before: rarity 0.42 < 0.5
    fresh = engine.feed(line(exec_event("/usr/bin/curl")))
    assert [(a.kind, a.confidence) for a in fresh] == [("anomaly", 1.0)]
    assert "bash>curl" in fresh[0].name
    assert fresh[0].session.blueprint == "python"
    once = engine.feed(line(exec_event("/usr/bin/curl")))  # seen once: 1/(1+ln 2) = 0.59
    assert [a.confidence for a in once] == [pytest.approx(rarity(1))]
    assert engine.feed(line(exec_event("/usr/bin/curl"))) == ()  # rarity(2) = 0.48


def test_ancestries_are_scored_per_blueprint(tmp_path: Path) -> None:
    (tmp_path / "none.yaml").write_text("rules: []\n")
    engine = Engine(load_rules(tmp_path), anomaly=AnomalyConfig(learning_events=1))
    go = {"stockade.dev/workspace": "ws-g", "stockade.dev/blueprint": "go"}
    engine.feed(line(exec_event("/usr/bin/make")))
    engine.feed(line(exec_event("/usr/bin/make", labels=go)))
    assert engine.feed(line(exec_event("/usr/bin/make"))) == ()
    assert [a.kind for a in engine.feed(line(exec_event("/usr/bin/gcc", labels=go)))] == ["anomaly"]


def test_no_blueprint_no_anomaly(tmp_path: Path) -> None:
    (tmp_path / "none.yaml").write_text("rules: []\n")
    engine = Engine(load_rules(tmp_path), anomaly=AnomalyConfig(learning_events=0))
    assert engine.feed(line(exec_event("/usr/bin/odd", labels={"app": "x"}))) == ()


def test_local_process_tree_correlates_without_pods() -> None:
    sessions = LocalSessions()
    sessions.register(5000, SessionInfo("ws-local", "carol", "s-local", "shell"))
    engine = Engine(load_rules(), sessions=sessions, anomaly=AnomalyConfig(enabled=False))
    shell = exec_event("/bin/bash", pid=5000, pod=False)
    shell_id = shell["process_exec"]["process"]["exec_id"]
    engine.feed(line(shell))
    child = exec_event("/usr/bin/python3", pid=5001, pod=False, parent_exec_id=shell_id)
    child_id = child["process_exec"]["process"]["exec_id"]
    engine.feed(line(child))
    probe = kprobe_event("__x64_sys_ptrace", [{"int_arg": 16}], pod=False, parent_exec_id=child_id)
    probe["process_kprobe"]["process"]["exec_id"] = "Z3JhbmRjaGlsZA=="
    alerts = engine.feed(line(probe))
    assert [a.rule_id for a in alerts] == ["ptrace-attach"]
    info = alerts[0].session
    assert (info.workspace, info.username, info.session_id) == ("ws-local", "carol", "s-local")
    assert alerts[0].ancestry == ["/usr/bin/python3", "/usr/bin/python3", "/bin/bash", "/bin/bash"]
    stranger = kprobe_event("__x64_sys_ptrace", [{"int_arg": 16}], pod=False, parent_exec_id="eA==")
    assert engine.feed(line(stranger)) == ()  # host process outside any session: not global


def test_proc_environ_of_the_same_user_is_not_foreign() -> None:
    engine = Engine(load_rules(), anomaly=AnomalyConfig(enabled=False))
    engine.feed(line(exec_event("/usr/bin/sleep", pid=777, uid=1000)))
    same = kprobe_event(
        "fd_install", [{"int_arg": 3}, {"file_arg": {"path": "/proc/777/environ"}}], uid=1000
    )
    assert engine.feed(line(same)) == ()
    other = kprobe_event(
        "fd_install", [{"int_arg": 3}, {"file_arg": {"path": "/proc/777/environ"}}], uid=1001
    )
    assert [a.rule_id for a in engine.feed(line(other))] == ["proc-environ-foreign"]


def test_counts_unknown_and_malformed_lines() -> None:
    engine = Engine(load_rules())
    for raw in (b'{"process_connect": {}}', b"garbage", b"", b'{"process_exec": {"process": 1}}'):
        assert engine.feed(raw) == ()
    assert engine.stats()["unknown"] == 1
    assert engine.stats()["malformed"] == 2
    assert engine.last_error.startswith("process_exec.process")


def test_process_table_is_bounded() -> None:
    engine = Engine(load_rules(), max_processes=64, anomaly=AnomalyConfig(enabled=False))
    for _ in range(500):
        engine.feed(line(exec_event("/usr/bin/true")))
    assert engine.stats()["processes"] <= 64


def test_hostile_exec_id_cycle_does_not_loop(tmp_path: Path) -> None:
    (tmp_path / "none.yaml").write_text("rules: []\n")
    engine = Engine(load_rules(tmp_path), anomaly=AnomalyConfig(learning_events=0, depth=8))
    a = exec_event("/usr/bin/a", parent_exec_id="Yg==")
    a["process_exec"]["process"]["exec_id"] = "YQ=="
    b = exec_event("/usr/bin/b", parent_exec_id="YQ==")
    b["process_exec"]["process"]["exec_id"] = "Yg=="
    b["process_exec"].pop("parent")
    a["process_exec"].pop("parent")
    engine.feed(line(a))
    alerts = engine.feed(line(b))
    assert [len(x.ancestry) for x in alerts] == [16]  # b, a, b, a, ...: bounded walks


def test_ancestries_walked_once_are_those_of_each_process(tmp_path: Path) -> None:
    # ancestors known only from their hooks (never exec'd in the export): a walk caches the key
    # of each one it fully saw, and a sibling or a child later finds the same ancestry as a
    # walk of its own would
    (tmp_path / "none.yaml").write_text("rules: []\n")
    engine = Engine(
        load_rules(tmp_path), anomaly=AnomalyConfig(learning_events=0, threshold=0.0, depth=3)
    )
    names = ["p0", "p1", "p2", "p3", "p4", "p5", "p6"]
    for index, name in enumerate(names):
        hook = kprobe_event("sys_getpid", [], binary=f"/usr/bin/{name}")
        hook["process_kprobe"]["process"]["exec_id"] = name
        hook["process_kprobe"]["process"]["parent_exec_id"] = names[index - 1] if index else ""
        hook["process_kprobe"].pop("parent")
        assert engine.feed(line(hook)) == ()

    def ancestry(binary: str, exec_id: str, parent_id: str) -> str:
        event = exec_event(f"/usr/bin/{binary}", parent_exec_id=parent_id)
        event["process_exec"]["process"]["exec_id"] = exec_id
        event["process_exec"].pop("parent")
        [alert] = engine.feed(line(event))
        return alert.name.rpartition(": ")[2]

    assert ancestry("a", "a", "p6") == "p5>p6>a"
    assert ancestry("b", "b", "p6") == "p5>p6>b"  # a sibling
    assert ancestry("c", "c", "p5") == "p4>p5>c"  # an uncle
    assert ancestry("d", "d", "p3") == "p2>p3>d"  # above what the first walk cached
    assert ancestry("e", "e", "a") == "p6>a>e"  # a child
    assert ancestry("f", "f", "p1") == "p0>p1>f"
    assert ancestry("g", "g", "p0") == "p0>g"


def _hook_of(binary: str, exec_id: str, parent_id: str) -> bytes:
    """A kprobe of a process first seen by its hooks, with no ``parent`` (not known yet)."""
    hook = kprobe_event("sys_getpid", [], binary=binary)
    hook["process_kprobe"]["process"]["exec_id"] = exec_id
    hook["process_kprobe"]["process"]["parent_exec_id"] = parent_id
    hook["process_kprobe"].pop("parent")
    return line(hook)


def _exec_of(binary: str, exec_id: str, parent_id: str) -> bytes:
    event = exec_event(binary, parent_exec_id=parent_id)
    event["process_exec"]["process"]["exec_id"] = exec_id
    event["process_exec"].pop("parent")
    return line(event)


def test_an_ancestor_known_after_a_walk_is_in_the_next_ancestries_broke(tmp_path: Path) -> None:
    # a walk that stops at an ancestor not in the table yet (its events come later: the export
    # is not ordered across CPUs; or the table dropped it and a later event brings it back)
    # caches the keys below it as open, walked again once it is known: a short key kept for
    # good would score every later child of the shell on "bash>X" (learned once, from the
    # first child), and a rare ancestry under the shell would raise nothing
    (tmp_path / "none.yaml").write_text("rules: []\n")
    engine = Engine(load_rules(tmp_path), anomaly=AnomalyConfig(learning_events=0, depth=4))
    assert engine.feed(_hook_of("/bin/bash", "shell", "agent")) == ()
    [first] = engine.feed(_exec_of("/usr/bin/curl", "c1", "shell"))
    assert first.name.endswith(": bash>curl")
    assert engine.feed(_hook_of("/usr/bin/agent", "agent", "")) == ()
    [second] = engine.feed(_exec_of("/usr/bin/curl", "c2", "shell"))
    assert second.name.endswith(": agent>bash>curl")
    assert second.ancestry == ["/usr/bin/curl", "/bin/bash", "/usr/bin/agent"]
    # a key that depends on no unknown ancestor is still cached and reused
    [third] = engine.feed(_exec_of("/usr/bin/python3", "c3", "shell"))
    assert third.name.endswith(": agent>bash>python3")
    assert engine.feed(_exec_of("/usr/bin/python3", "c4", "shell")) == ()


def test_an_ancestor_dropped_from_a_full_table_and_brought_back_broke(tmp_path: Path) -> None:
    # the same through the table's eviction: a flood of execs drops the oldest entries (the
    # shell and its parent); the shell's next child brings the shell back from its ``parent``
    # field (the shell's own parent still gone), a sibling shell brings that parent back: the
    # shell's later children are scored on their whole ancestry again
    (tmp_path / "none.yaml").write_text("rules: []\n")
    engine = Engine(
        load_rules(tmp_path), anomaly=AnomalyConfig(learning_events=0, depth=4), max_processes=16
    )

    def run(binary: str, exec_id: str, parent: dict[str, Any] | None) -> list[str]:
        event = exec_event(binary, parent_exec_id=parent["exec_id"] if parent else "")
        event["process_exec"]["process"]["exec_id"] = exec_id
        if parent is None:
            event["process_exec"].pop("parent")
        else:
            event["process_exec"]["parent"] = parent
        return [a.name.rpartition(": ")[2] for a in engine.feed(line(event))]

    agent = process("/usr/bin/agent", parent_exec_id="")
    agent["exec_id"] = "agent"
    shell = process("/bin/bash", parent_exec_id="agent")
    shell["exec_id"] = "shell"
    assert run("/usr/bin/agent", "agent", None) == ["agent"]
    assert run("/bin/bash", "shell", agent) == ["agent>bash"]
    for n in range(16):  # the flood: the table drops its oldest eighth when full
        run("/usr/bin/true", f"t{n}", None)
    assert run("/usr/bin/curl", "c1", shell) == ["bash>curl"]  # the shell's parent is gone
    assert run("/bin/sh", "shell2", agent) == ["agent>sh"]  # ... and back
    assert run("/usr/bin/curl", "c2", shell) == ["agent>bash>curl"]


def test_a_shell_exec_d_before_its_parent_was_known_broke(tmp_path: Path) -> None:
    # the same for a key cached at the process's own exec (the shell scored while its parent
    # was unknown): its children find the parent once it is known
    (tmp_path / "none.yaml").write_text("rules: []\n")
    engine = Engine(load_rules(tmp_path), anomaly=AnomalyConfig(learning_events=0, depth=4))
    [shell] = engine.feed(_exec_of("/bin/bash", "shell", "agent"))
    assert shell.name.endswith(": bash")
    [first] = engine.feed(_exec_of("/usr/bin/curl", "c1", "shell"))
    assert first.name.endswith(": bash>curl")
    assert engine.feed(_hook_of("/usr/bin/agent", "agent", "")) == ()
    [second] = engine.feed(_exec_of("/usr/bin/curl", "c2", "shell"))
    assert second.name.endswith(": agent>bash>curl")

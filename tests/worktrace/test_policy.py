"""Generated TracingPolicies validate against Tetragon's schema, as do its 70 examples."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from stockade.core.errors import InvalidInput
from stockade.worktrace import PolicyValidator, dump_policies, load_rules, tracing_policies

from .conftest import EXAMPLES, SCHEMAS

EXAMPLE_DOCS = [
    (str(p.relative_to(EXAMPLES)), doc)
    for p in sorted(EXAMPLES.rglob("*.yaml"))
    for doc in yaml.safe_load_all(p.read_text())
    if doc is not None
]


@pytest.fixture(scope="module")
def validator() -> PolicyValidator:
    return PolicyValidator(SCHEMAS)


def test_there_are_seventy_examples() -> None:
    assert len(EXAMPLE_DOCS) == 70


@pytest.mark.parametrize(("name", "doc"), EXAMPLE_DOCS, ids=[n for n, _ in EXAMPLE_DOCS])
def test_upstream_examples_validate(validator: PolicyValidator, name: str, doc: Any) -> None:
    assert validator.errors(doc) == []


def test_generated_policies_validate(validator: PolicyValidator) -> None:
    docs = tracing_policies(load_rules())
    assert [d["metadata"]["name"] for d in docs] == ["stockade-worktrace"]
    for doc in docs:
        assert validator.errors(doc) == []
    reread = list(yaml.safe_load_all(dump_policies(docs)))
    assert reread == docs


def test_generated_policy_asks_for_exactly_what_the_rules_need() -> None:
    (doc,) = tracing_policies(load_rules())
    spec = doc["spec"]
    assert spec["podSelector"] == {
        "matchExpressions": [{"key": "stockade.dev/workspace", "operator": "Exists"}]
    }
    calls = {p["call"]: p for p in spec["kprobes"]}
    assert set(calls) == {
        "sys_init_module",
        "sys_finit_module",
        "sys_ptrace",
        "sys_setns",
        "sys_memfd_create",
        "sys_socket",
        "tcp_connect",
        "sys_unshare",
        "fd_install",
        # reverse-shell-stdio: each process's descriptor table
        "sys_connect",
        "sys_dup",
        "sys_dup2",
        "sys_dup3",
        "sys_fcntl",
        "sys_ioctl",
        "sys_close",
        "sys_close_range",
    }
    assert calls["sys_ptrace"]["syscall"] is True
    assert calls["tcp_connect"]["syscall"] is False
    assert calls["fd_install"]["args"] == [
        {"index": 0, "type": "int"},
        {"index": 1, "type": "file"},
    ]
    assert {s["matchArgs"][0]["values"][0] for s in calls["fd_install"]["selectors"]} == {
        "/release_agent",
        "/environ",
    }
    assert "selectors" not in calls["tcp_connect"]  # one rule wants every connect
    assert "reverse-shell-stdio" not in calls["tcp_connect"]["message"]  # the table's connect
    ints = [{"index": i, "type": "int"} for i in range(3)]
    returned = {"index": 0, "type": "int"}
    # every socket(): its family and type (SOCK_CLOEXEC), and the new descriptor; the packet
    # socket rule's own selector (family 17) would hide the rest, so the engine filters
    assert calls["sys_socket"]["args"] == ints[:2]
    assert "selectors" not in calls["sys_socket"]
    assert "packet-socket" in calls["sys_socket"]["message"]
    for call, args in [
        ("sys_socket", 2),
        ("sys_connect", 1),  # 0 or -EINPROGRESS: connected
        ("sys_dup", 1),
        ("sys_dup2", 2),
        ("sys_dup3", 3),  # flags: O_CLOEXEC
        ("sys_fcntl", 3),
        ("sys_close_range", 3),
    ]:
        probe = calls[call]
        assert probe["syscall"] is True
        assert probe["args"] == ints[:args], call
        assert probe["return"] is True, call  # one event at the return, args and all
        assert probe["returnArg"] == returned, call
        assert "reverse-shell-stdio" in probe["message"]
    for call in ("sys_connect", "sys_dup", "sys_dup2", "sys_dup3", "sys_close", "sys_close_range"):
        assert "selectors" not in calls[call], call  # any descriptor may be a socket
    assert calls["sys_close"]["args"] == ints[:1]
    assert "return" not in calls["sys_close"]  # a close always closes (even on EINTR)
    assert "return" not in calls["sys_ioctl"]
    assert calls["sys_fcntl"]["selectors"] == [  # F_DUPFD, F_SETFD, F_DUPFD_CLOEXEC
        {"matchArgs": [{"index": 1, "operator": "Equal", "values": ["0", "2", "1030"]}]}
    ]
    assert calls["sys_ioctl"]["selectors"] == [  # FIONCLEX, FIOCLEX
        {"matchArgs": [{"index": 1, "operator": "Equal", "values": ["21584", "21585"]}]}
    ]
    for call in calls:  # arm64 has no dup2; close_range is Linux 5.9+
        optional = call in ("sys_dup2", "sys_close_range")
        assert (calls[call].get("ignore") == {"callNotFound": True}) is optional, call


def test_stdio_rule_keeps_a_fcntl_rules_own_selector(
    tmp_path: Path, validator: PolicyValidator
) -> None:
    """A syscall rule on fcntl and the reverse-shell rule share the kprobe: both selectors."""
    (tmp_path / "r.yaml").write_text(
        "rules:\n"
        "  - {id: d, confidence: 0.5, report: true, global: false,\n"
        "     syscall: {call: [sys_fcntl], args: [{index: 1, type: int, values: [1031]}]}}\n"
        "  - {id: s, confidence: 0.9, report: true, global: false,\n"
        "     process: {binary: [sh], stdio_socket: true}}\n"
    )
    (doc,) = tracing_policies(load_rules(tmp_path))
    calls = {p["call"]: p for p in doc["spec"]["kprobes"]}
    assert set(calls) == {
        "sys_socket",
        "sys_connect",
        "sys_dup",
        "sys_dup2",
        "sys_dup3",
        "sys_fcntl",
        "sys_ioctl",
        "sys_close",
        "sys_close_range",
    }
    assert calls["sys_fcntl"]["selectors"] == [
        {"matchArgs": [{"index": 1, "operator": "Equal", "values": ["1031"]}]},
        {"matchArgs": [{"index": 1, "operator": "Equal", "values": ["0", "2", "1030"]}]},
    ]
    assert validator.errors(doc) == []


def test_a_dup_rule_s_selector_gives_way_to_the_descriptor_table(tmp_path: Path) -> None:
    """A rule on dup3 of fd 255 and the reverse-shell rule: the table needs every dup3, so the
    kprobe has no selector and the engine matches the rule's condition itself."""
    (tmp_path / "r.yaml").write_text(
        "rules:\n"
        "  - {id: d, confidence: 0.5, report: true, global: false,\n"
        "     syscall: {call: [sys_dup3], args: [{index: 1, type: int, values: [255]}]}}\n"
        "  - {id: s, confidence: 0.9, report: true, global: false,\n"
        "     process: {binary: [sh], stdio_socket: true}}\n"
    )
    (doc,) = tracing_policies(load_rules(tmp_path))
    calls = {p["call"]: p for p in doc["spec"]["kprobes"]}
    assert "selectors" not in calls["sys_dup3"]
    assert calls["sys_dup3"]["message"] == "stockade worktrace: d, s"


def test_global_rules_get_a_policy_without_pod_selector(
    tmp_path: Path, validator: PolicyValidator
) -> None:
    (tmp_path / "r.yaml").write_text(
        "rules:\n"
        "  - {id: g, confidence: 0.5, report: true, global: true,\n"
        "     syscall: {call: [sys_mount], args: [{index: 0, type: string, path: ['/dev/*']}]}}\n"
    )
    docs = tracing_policies(load_rules(tmp_path), name="t")
    assert [d["metadata"]["name"] for d in docs] == ["t-global"]  # no workspace-only kprobe
    assert "podSelector" not in docs[0]["spec"]
    assert docs[0]["spec"]["kprobes"][0]["selectors"] == [
        {"matchArgs": [{"index": 0, "operator": "Prefix", "values": ["/dev/"]}]}
    ]
    for doc in docs:
        assert validator.errors(doc) == []


@pytest.mark.parametrize(
    ("change", "where"),
    [
        (lambda d: d["spec"]["kprobes"][0].update(bogus=1), "spec.kprobes.0"),
        (lambda d: d["spec"].update(kprobez=[]), "spec"),
        (lambda d: d["spec"]["kprobes"][0].pop("call"), "spec.kprobes.0"),
        (
            lambda d: d["spec"]["kprobes"][2]["args"][0].update(type="integer"),
            "spec.kprobes.2.args.0.type",
        ),
        (
            lambda d: d["spec"]["podSelector"]["matchExpressions"][0].update(operator="Has"),
            "spec.podSelector.matchExpressions.0.operator",
        ),
    ],
)
def test_the_validator_rejects_broken_policies(
    validator: PolicyValidator, change: Any, where: str
) -> None:
    doc = copy.deepcopy(tracing_policies(load_rules())[0])
    change(doc)
    problems = validator.errors(doc)
    assert problems
    assert problems[0].startswith(where + ":")
    with pytest.raises(InvalidInput):
        validator.check(doc)


def test_unknown_kind_and_missing_schema(tmp_path: Path, validator: PolicyValidator) -> None:
    assert validator.errors({"kind": "Pod"}) == [
        "kind: 'Pod' is not TracingPolicy or TracingPolicyNamespaced"
    ]
    with pytest.raises(InvalidInput, match="cannot read the schema"):
        PolicyValidator(tmp_path)

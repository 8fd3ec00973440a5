"""Tetragon's export parses into strict models; unknown types and bad shapes are counted."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest

from stockade.worktrace import EventShapeError, UnknownEvent, parse_event, parse_line
from stockade.worktrace._events import (
    Capability,
    Cred,
    FileArg,
    KernelModule,
    Sock,
    TruncatedBytes,
    UserNamespace,
)

from .conftest import book_events, gke_lines, kprobe_event, line

ENTERPRISE = {"process_connect", "process_close", "process_listen"}


@pytest.mark.parametrize(
    ("name", "event"), book_events(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_every_book_sample_parses_or_is_unknown(name: str, event: dict[str, Any]) -> None:
    kind = next(k for k in event if k not in {"node_name", "time"})
    if kind in ENTERPRISE:
        with pytest.raises(UnknownEvent) as info:
            parse_event(event)
        assert info.value.kind == kind
        return
    parsed = parse_line(orjson.dumps(event))
    assert parsed.type == kind
    assert parsed.process.exec_id == event[kind]["process"]["exec_id"]
    assert parsed.process.binary == event[kind]["process"]["binary"]


def test_book_has_the_documented_mix() -> None:
    kinds = [next(k for k in e if k not in {"node_name", "time"}) for _, e in book_events()]
    assert sum(k in ENTERPRISE for k in kinds) == 11
    assert {"process_exec", "process_exit", "process_kprobe"} <= set(kinds)


def test_gke_export_lines_parse_with_pod_labels() -> None:
    events = [parse_line(raw) for raw in gke_lines()]
    assert len(events) == 3
    first = events[0]
    assert first.type == "process_exec"
    assert first.process.pod is not None
    assert first.process.pod.pod_labels["class"] == "tiefighter"
    assert first.process.pod.image == "docker.io/tgraf/netperf:latest"
    assert first.time == ""  # the GKE export has no envelope time: the start time is used
    assert first.timestamp() == pytest.approx(1666062978.273546, abs=1e-3)


def test_book_kprobe_arguments_are_typed() -> None:
    by_name = dict(book_events())
    read = parse_event(by_name["cat_process_kprobe.json"])
    assert read.function == "sys_read"  # __x64_ prefix removed
    file_arg, truncated, size = read.args
    assert isinstance(file_arg.value, FileArg)
    assert file_arg.value.path == "/usr/share/elasticsearch/config/elasticsearch.keystore"
    assert isinstance(truncated.value, TruncatedBytes)
    assert truncated.value.size == 65536
    assert size.kind == "size_arg"
    assert size.value == 65536
    write = parse_event(by_name["process_kprobe.json"])
    assert write.args[1].kind == "bytes_arg"
    assert write.args[1].value.startswith(b"daemon:x:2:2:")


def test_every_listed_argument_kind() -> None:
    raw = base64.b64encode(b"\x00\x01abc").decode()
    args = [
        {"string_arg": "hello"},
        {"int_arg": -3},
        {"file_arg": {"path": "/etc/shadow", "mount": "", "flags": "", "permission": "-rw-r-----"}},
        {"path_arg": {"path": "/tmp/x"}},
        {
            "sock_arg": {
                "family": "AF_INET",
                "type": "SOCK_STREAM",
                "protocol": "IPPROTO_TCP",
                "saddr": "10.0.0.5",
                "daddr": "10.96.0.1",
                "sport": 40000,
                "dport": 443,
            }
        },
        {"cred_arg": {"permitted": ["CAP_SYS_ADMIN"], "effective": ["CAP_SYS_ADMIN"]}},
        {"capability_arg": {"value": 21, "name": "CAP_SYS_ADMIN"}},
        {"bytes_arg": raw},
        {"truncated_bytes_arg": {"bytes_arg": raw, "orig_size": "9000"}},
        {"user_ns_arg": {"level": 1, "uid": 1000, "gid": 1000, "ns": {"inum": 4026532000}}},
        {"module_arg": {"name": "evil", "signature_ok": False, "tainted": ["TAINT_OOT_MODULE"]}},
        {"long_arg": "-9000000000"},
        {"uint_arg": 7, "label": "flags"},
    ]
    event = parse_line(line(kprobe_event("__x64_sys_whatever", args)))
    values = [a.value for a in event.args]
    assert values[0] == "hello"
    assert values[1] == -3
    assert isinstance(values[2], FileArg)
    assert values[2].permission == "-rw-r-----"
    assert isinstance(values[4], Sock)
    assert (values[4].daddr, values[4].dport) == ("10.96.0.1", 443)
    assert isinstance(values[5], Cred)
    assert values[5].effective == ["CAP_SYS_ADMIN"]
    assert isinstance(values[6], Capability)
    assert values[6].value == 21
    assert values[7] == b"\x00\x01abc"
    assert isinstance(values[8], TruncatedBytes)
    assert values[8].size == 9000
    assert isinstance(values[9], UserNamespace)
    assert values[9].inum == 4026532000
    assert isinstance(values[10], KernelModule)
    assert values[10].signature_ok is False
    assert values[11] == -9000000000
    assert event.args[12].label == "flags"


@pytest.mark.parametrize(
    ("mutate", "where"),
    [
        (lambda e: e["process_kprobe"]["process"].update(pid="many"), "process_kprobe.process.pid"),
        (
            lambda e: e["process_kprobe"]["process"].update(binary=7),
            "process_kprobe.process.binary",
        ),
        (lambda e: e["process_kprobe"].update(args=[{"warp_arg": 1}]), "process_kprobe.args[0]"),
        (
            lambda e: e["process_kprobe"].update(args=[{"int_arg": 1, "string_arg": "x"}]),
            "process_kprobe.args[0]",
        ),
        (
            lambda e: e["process_kprobe"].update(args=[{"bytes_arg": "%%%"}]),
            "process_kprobe.args[0].bytes_arg",
        ),
        (lambda e: e["process_kprobe"].update(args={"int_arg": 1}), "process_kprobe.args"),
        (
            lambda e: e["process_kprobe"]["process"]["pod"].update(pod_labels={"a": 1}),
            "process_kprobe.process.pod.pod_labels[...]",
        ),
        (lambda e: e["process_kprobe"].pop("process"), "process_kprobe.process"),
        (lambda e: e.update(time=5), "time"),
    ],
)
def test_hostile_shapes_are_rejected_naming_the_field(mutate: Any, where: str) -> None:
    event = kprobe_event("sys_ptrace", [{"int_arg": 16}])
    mutate(event)
    with pytest.raises(EventShapeError) as info:
        parse_event(event)
    assert info.value.where == where


@pytest.mark.parametrize(
    "raw",
    [b"not json", b"[1,2]", b'{"process_exec": "x"}', b"{}", b'{"node_name": "n"}', b"{" * 100],
)
def test_garbage_lines_raise_shape_errors(raw: bytes) -> None:
    with pytest.raises(EventShapeError):
        parse_line(raw)


def test_oversized_line_is_refused_before_decoding() -> None:
    with pytest.raises(EventShapeError, match="exceeds"):
        parse_line(b'{"process_exec": ' + b" " * (1 << 20) + b"}")


def test_other_oss_types_are_unknown_not_errors() -> None:
    for kind in ("process_loader", "process_throttle", "rate_limit_info", "process_usdt"):
        with pytest.raises(UnknownEvent):
            parse_event({kind: {}, "node_name": "n"})

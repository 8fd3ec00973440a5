"""Worktrace fixtures: the upstream Tetragon test data and events built in the same shape.

The data lives in ``shared/testdata/`` beside the repository (``<repo>/../shared/testdata``, as CI
lays it out). A checkout elsewhere (a git worktree) sets ``STOCKADE_SHARED_TESTDATA`` to the
``testdata`` directory. Without either, the tests fail with that message: never a skip.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import orjson
import pytest

REPO = Path(__file__).resolve().parents[2]


def shared_testdata() -> Path:
    beside = REPO.parent / "shared" / "testdata"
    if beside.is_dir():
        return beside
    env = os.environ.get("STOCKADE_SHARED_TESTDATA")
    if env and Path(env).is_dir():
        return Path(env)
    raise RuntimeError(
        f"no shared test data at {beside}; set STOCKADE_SHARED_TESTDATA to shared/testdata"
    )


TETRAGON = shared_testdata() / "tetragon"
BOOK = TETRAGON / "docs" / "security-observability-with-ebpf" / "03_chapter"
GKE = TETRAGON / "testdata" / "events.json"
SCHEMAS = TETRAGON / "pkg" / "tracingpolicy" / "schemas"
EXAMPLES = TETRAGON / "examples" / "tracingpolicy"
NSENTER = (
    BOOK
    / "03_security_observability_events/01_reaching_the_host_namespace/privileged-pod-nsenter.json"
)


def book_events() -> list[tuple[str, dict[str, Any]]]:
    return [(p.name, json.loads(p.read_text())) for p in sorted(BOOK.rglob("*.json"))]


def gke_lines() -> list[bytes]:
    return [line for line in GKE.read_bytes().splitlines() if line.strip()]


WORKSPACE_LABELS = {
    "stockade.dev/workspace": "ws-alice",
    "stockade.dev/user": "alice",
    "stockade.dev/session": "s-0001",
    "stockade.dev/blueprint": "python",
}

_counter = [0]


def tick() -> str:
    """The next instant of the tests' clock (a microsecond per call from 10:00:01): events and
    process starts built later happen later, as in an export (a child built after its
    parent's close was forked after it)."""
    _counter[0] += 1
    micros = 1_000_000 + _counter[0]
    return f"2026-12-01T10:00:{micros // 1_000_000:02d}.{micros % 1_000_000:06d}Z"


def process(
    binary: str,
    arguments: str = "",
    *,
    pid: int | None = None,
    uid: int = 1000,
    labels: dict[str, str] | None = None,
    caps: list[str] | None = None,
    parent_exec_id: str = "cGFyZW50",
    pod: bool = True,
) -> dict[str, Any]:
    """A ``Process`` as Tetragon writes it, in a workspace Pod unless ``pod=False``."""
    _counter[0] += 1
    n = _counter[0]
    out: dict[str, Any] = {
        "exec_id": f"bm9kZTp{n}",
        "pid": pid if pid is not None else 40000 + n,
        "uid": uid,
        "cwd": "/home/alice",
        "binary": binary,
        "arguments": arguments,
        "flags": "execve clone",
        "start_time": tick(),
        "auid": uid,
        "parent_exec_id": parent_exec_id,
        "refcnt": 1,
    }
    if pod:
        out["pod"] = {
            "namespace": "stockade-workspaces",
            "name": "ws-alice-0",
            "container": {
                "id": "containerd://abc",
                "name": "workspace",
                "image": {"id": "img@sha256:00", "name": "registry.local/python:3.12"},
                "start_time": "2026-12-01T09:00:00Z",
                "pid": 7,
            },
            "pod_labels": dict(WORKSPACE_LABELS if labels is None else labels),
        }
    if caps is not None:
        out["cap"] = {"permitted": caps, "effective": caps}
    return out


def parent_process(**kw: Any) -> dict[str, Any]:
    p = process("/bin/bash", **kw)
    p["exec_id"] = "cGFyZW50"
    p["parent_exec_id"] = "Z3JhbmQ="
    return p


def exec_event(binary: str, arguments: str = "", *, time: str = "", **kw: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "process_exec": {"process": process(binary, arguments, **kw), "parent": parent_process()},
        "node_name": "node-1",
    }
    if time:
        event["time"] = time
    return event


def kprobe_event(
    function: str,
    args: list[dict[str, Any]],
    *,
    binary: str = "/usr/bin/python3",
    time: str = "",
    **kw: Any,
) -> dict[str, Any]:
    time = time or tick()
    return {
        "process_kprobe": {
            "process": process(binary, **kw),
            "parent": parent_process(),
            "function_name": function,
            "args": args,
            "action": "KPROBE_ACTION_POST",
            "policy_name": "stockade-worktrace",
        },
        "node_name": "node-1",
        "time": time,
    }


def line(event: dict[str, Any]) -> bytes:
    return orjson.dumps(event)


def variant(event: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return copy.deepcopy(event) | changes


@pytest.fixture
def nsenter_line() -> bytes:
    return orjson.dumps(json.loads(NSENTER.read_text()))


#: ``SOCK_CLOEXEC`` / ``O_CLOEXEC`` (the same bit), and ``socket()``'s families and types.
CLOEXEC = 0o2000000
AF_UNIX, AF_INET = 1, 2
SOCK_STREAM = 1


def syscall_event(
    function: str,
    ints: list[int],
    *,
    ret: int | None = None,
    binary: str = "/usr/bin/python3",
    **kw: Any,
) -> dict[str, Any]:
    """A syscall kprobe of int arguments as the generated policy asks for it; ``ret`` is its
    ``returnArg`` (``return: true``: Tetragon sends one event at the return, args and all)."""
    event = kprobe_event(function, [{"int_arg": v} for v in ints], binary=binary, **kw)
    if ret is not None:
        event["process_kprobe"]["return"] = {"int_arg": ret}
    return event


def socket_event(
    fd: int,
    *,
    family: int = AF_INET,
    kind: int = SOCK_STREAM,
    cloexec: bool = True,
    binary: str = "/usr/bin/python3",
) -> dict[str, Any]:
    """``socket(family, kind)`` returning ``fd`` (Python's sockets are close-on-exec)."""
    flags = kind | (CLOEXEC if cloexec else 0)
    return syscall_event("__x64_sys_socket", [family, flags], ret=fd, binary=binary)


def connect_event(fd: int, *, ret: int = 0, binary: str = "/usr/bin/python3") -> dict[str, Any]:
    return syscall_event("__x64_sys_connect", [fd], ret=ret, binary=binary)

"""Worktrace: events/s matched on one core vs ``orjson.loads`` alone, and event-to-alert latency.

1. throughput: EVENTS export lines shaped like Tetragon's (process_exec / process_exit of
   workspace Pods with ``stockade.dev/*`` labels, ``fd_install`` and ``tcp_connect`` kprobes and
   the descriptor-table calls (socket, connect, dup2, close, fcntl), in a fixed pseudo-random
   mix; 0.5% of them match a rule) are fed to a fresh :class:`Engine` with
   the default rules and anomaly scoring on: parse, correlate, match, score. The anchor is
   ``orjson.loads`` of the same lines. Rounds alternate anchor and subject and count this
   process's CPU time (the machine is shared: wall time would measure the neighbours); best of
   ROUNDS each. Goals: >= 40% of the anchor's rate
   and >= 50,000 events/s.
2. latency: a writer thread appends to ``tetragon.log`` at ~10,000 events/s, rotating the file
   (rename, new file) every ROTATE lines, with a triggering ``nsenter -t 1`` exec every
   TRIGGER_EVERY lines; :class:`Worktrace` follows the file and publishes each alert to a real
   nats-server (JetStream, acknowledged). Latency is from the write of the triggering line to
   the alert's store acknowledgement. Goal: p99 <= 50 ms (k8shell documents ~305 ms).
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from bench._report import record
from stockade.bus import Bus, EmbeddedNats
from stockade.core.settings import WorktraceSettings
from stockade.worktrace import (
    Alert,
    BusAlertSink,
    Engine,
    FileFollower,
    RuleSource,
    Worktrace,
    load_rules,
)

EVENTS = 50_000
ROUNDS = 5
LATENCY_SAMPLES = 400
TRIGGER_EVERY = 25
ROTATE = 5_000
RATE = 10_000  # lines/s written during the latency run

LABELS = {
    "stockade.dev/workspace": "ws-{u}",
    "stockade.dev/user": "{u}",
    "stockade.dev/session": "s-{u}-1",
    "stockade.dev/blueprint": "python",
    "app.kubernetes.io/managed-by": "stockade",
}
BINARIES = ["/usr/bin/git", "/usr/bin/python3", "/bin/ls", "/usr/bin/grep", "/usr/bin/make",
            "/usr/bin/cc", "/bin/cat", "/usr/bin/ssh", "/usr/bin/curl", "/bin/sed"]  # fmt: skip
USERS = ["alice", "bob", "carol", "dave"]


def _process(rng: random.Random, n: int, binary: str, args: str, user: str) -> dict[str, Any]:
    return {
        "exec_id": f"bm9kZS0xOjEzNjY1ODIyNjI0ODU2Oj{n:08d}",
        "pid": 100_000 + n,
        "uid": 1000 + USERS.index(user),
        "cwd": f"/home/{user}/src/project",
        "binary": binary,
        "arguments": args,
        "flags": "execve clone",
        "start_time": "2026-12-01T10:00:00.273546829Z",
        "auid": 1000,
        "pod": {
            "namespace": "stockade-workspaces",
            "name": f"ws-{user}-0",
            "container": {
                "id": "containerd://19a02291e106ce6227b684197be232ea57c4e1a5ab2604a12608c325d701c7f4",
                "name": "workspace",
                "image": {
                    "id": "registry.local/python@sha256:8e86f744bfea165fd4ce68caa05abc9",
                    "name": "registry.local/python:3.12",
                },
                "start_time": "2026-12-01T09:00:00Z",
                "pid": rng.randint(2, 500),
            },
            "pod_labels": {k: v.format(u=user) for k, v in LABELS.items()},
        },
        "docker": "19a02291e106ce6227b684197be232e",
        "parent_exec_id": f"bm9kZS0xOjEzNjY1ODIyNjI0ODU2Oj{max(0, n - 1):08d}",
        "refcnt": 1,
    }


#: (function, int arguments, return value) of the descriptor-table calls: a socket on fd 3
#: (SOCK_CLOEXEC), its connect, a pipe onto stdin, a close, an fcntl F_SETFD.
FD_CALLS = [
    ("__x64_sys_socket", [2, 0o2000001], 3),
    ("__x64_sys_connect", [3], -115),
    ("__x64_sys_dup2", [5, 0], 0),
    ("__x64_sys_close", [3], None),
    ("__x64_sys_close", [7], None),
    ("__x64_sys_fcntl", [4, 2, 1], 0),
]


def _fd_call(rng: random.Random, proc: dict[str, Any]) -> dict[str, Any]:
    function, ints, ret = rng.choice(FD_CALLS)
    body: dict[str, Any] = {"process": proc, "function_name": function,
                            "args": [{"int_arg": v} for v in ints],
                            "action": "KPROBE_ACTION_POST"}  # fmt: skip
    if ret is not None:
        body["return"] = {"int_arg": ret}
    return body


def make_lines(count: int, seed: int = 7) -> list[bytes]:
    rng = random.Random(seed)
    lines: list[bytes] = []
    live: list[dict[str, Any]] = []
    n = 0
    while len(lines) < count:
        roll = rng.random()
        user = rng.choice(USERS)
        if roll < 0.005:
            proc = _process(rng, n, "/usr/bin/nsenter", "-t 1 -m -u -n -i -p bash", user)
            n += 1
            event: dict[str, Any] = {"process_exec": {"process": proc}}
        elif roll < 0.40 or not live:
            binary = rng.choice(BINARIES)
            proc = _process(rng, n, binary, f"--opt value{rng.randint(0, 9)} file.txt", user)
            n += 1
            parent = _process(rng, 10_000_000 + USERS.index(user), "/bin/bash", "", user)
            proc["parent_exec_id"] = parent["exec_id"]  # each user's session shell
            event = {"process_exec": {"process": proc, "parent": parent}}
            live.append(proc)
        elif roll < 0.70:
            proc = live.pop(rng.randrange(len(live)))
            event = {"process_exit": {"process": proc, "status": 0}}
        elif roll < 0.80:
            proc = rng.choice(live)
            path = f"home/{user}/src/project/file{rng.randint(0, 99)}.py"
            event = {"process_kprobe": {"process": proc, "function_name": "fd_install",
                                        "args": [{"int_arg": 3}, {"file_arg": {"path": path}}],
                                        "action": "KPROBE_ACTION_POST"}}  # fmt: skip
        elif roll < 0.90:  # the descriptor-table calls of reverse-shell-stdio
            proc = rng.choice(live)
            event = {"process_kprobe": _fd_call(rng, proc)}
        else:
            proc = rng.choice(live)
            sock = {"family": "AF_INET", "type": "SOCK_STREAM", "protocol": "IPPROTO_TCP",
                    "saddr": "10.8.0.12", "daddr": f"140.82.{rng.randint(0, 255)}.4",
                    "sport": rng.randint(30000, 60000), "dport": 443}  # fmt: skip
            event = {"process_kprobe": {"process": proc, "function_name": "tcp_connect",
                                        "args": [{"sock_arg": sock}],
                                        "action": "KPROBE_ACTION_POST"}}  # fmt: skip
        event["node_name"] = "gke-node-1"
        event["time"] = "2026-12-01T10:00:01.000000000Z"
        lines.append(orjson.dumps(event))
    return lines


def _seconds(func: Any, lines: list[bytes]) -> float:
    start = time.process_time()
    func(lines)
    return time.process_time() - start


def throughput() -> None:
    lines = make_lines(EVENTS)
    rules = load_rules()

    def parse_only(batch: list[bytes]) -> None:
        loads = orjson.loads
        for raw in batch:
            loads(raw)

    alerts = [0]

    def engine_run(batch: list[bytes]) -> None:
        engine = Engine(rules)  # a fresh engine: the process table starts empty each round
        feed = engine.feed
        for raw in batch:
            feed(raw)
        alerts[0] = engine.alerts
        assert engine.malformed == 0, engine.last_error

    anchor_s = ours_s = float("inf")
    for _ in range(ROUNDS):
        anchor_s = min(anchor_s, _seconds(parse_only, lines))
        ours_s = min(ours_s, _seconds(engine_run, lines))
    anchor, ours = len(lines) / anchor_s, len(lines) / ours_s
    ratio = ours / anchor
    record(
        "events/s parsed+correlated+matched (one core)",
        value=f"{ours:,.0f}/s ({alerts[0]} alerts in {EVENTS:,} events)",
        anchor=f"orjson.loads alone {anchor:,.0f}/s",
        ratio=ratio,
        goal=">= 0.40x and >= 50,000/s",
        met=ratio >= 0.40 and ours >= 50_000,
    )


def _writer(path: Path, triggers: dict[int, float], stop: threading.Event) -> None:
    benign = make_lines(TRIGGER_EVERY * 50, seed=11)
    benign = [b for b in benign if b"nsenter" not in b]
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    written = 0
    rotations = 0
    seq = 0
    interval = TRIGGER_EVERY / RATE
    try:
        while seq < LATENCY_SAMPLES and not stop.is_set():
            chunk = b"\n".join(benign[(seq * TRIGGER_EVERY + i) % len(benign)]
                               for i in range(TRIGGER_EVERY - 1)) + b"\n"  # fmt: skip
            os.write(fd, chunk)
            trigger = {
                "process_exec": {"process": {
                    "exec_id": f"dHJpZ2dlcjo{seq}", "pid": 9, "uid": 1000,
                    "binary": "/usr/bin/nsenter", "arguments": f"-t 1 -m bash #{seq}",
                    "pod": {"namespace": "ws", "name": "ws-alice-0",
                            "pod_labels": {"stockade.dev/workspace": "ws-alice"}}}},
                "node_name": "n", "time": "2026-12-01T10:00:01Z",
            }  # fmt: skip
            line = orjson.dumps(trigger) + b"\n"
            triggers[seq] = time.monotonic()
            os.write(fd, line)
            written += TRIGGER_EVERY
            seq += 1
            if written // ROTATE > rotations:
                os.close(fd)
                path.rename(path.with_name(f"tetragon-{rotations}.log"))
                rotations += 1
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            time.sleep(interval)
    finally:
        os.close(fd)


class _Timing:
    def __init__(self, triggers: dict[int, float], done: asyncio.Event) -> None:
        self.triggers = triggers
        self.samples: list[float] = []
        self.done = done

    async def emit(self, alerts: list[Alert]) -> None:
        now = time.monotonic()
        for alert in alerts:
            seq = int(alert.arguments.rpartition("#")[2])
            self.samples.append((now - self.triggers[seq]) * 1000)
        if len(self.samples) >= LATENCY_SAMPLES:
            self.done.set()


async def latency() -> None:
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        path = tmp / "tetragon.log"
        path.write_bytes(b"")
        async with EmbeddedNats(tmp / "nats") as url:
            bus = await Bus.connect(url, name="bench-worktrace")
            await bus.ensure_streams()
            triggers: dict[int, float] = {}
            done = asyncio.Event()
            timing = _Timing(triggers, done)
            settings = WorktraceSettings(anomalies=False, respond=False)
            matched: list[float] = []

            def on_alert(alert: Alert, now: float) -> None:
                seq = int(alert.arguments.rpartition("#")[2])
                matched.append((now - triggers[seq]) * 1000)

            service = Worktrace(
                RuleSource(),
                sinks=[BusAlertSink(bus), timing],
                settings=settings,
                on_alert=on_alert,
            )
            follower = FileFollower(path, poll_interval=settings.poll_interval)
            stop = threading.Event()
            writer = threading.Thread(target=_writer, args=(path, triggers, stop))
            task = asyncio.create_task(service.run(follower))
            writer.start()
            try:
                await asyncio.wait_for(done.wait(), 120)
            finally:
                stop.set()
                follower.close()
                await asyncio.to_thread(writer.join)
                await asyncio.wait_for(task, 10)
                await bus.close()
    samples = sorted(timing.samples)
    p50 = statistics.median(samples)
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    seen = sorted(matched)
    m50 = statistics.median(seen)
    m99 = seen[min(len(seen) - 1, int(len(seen) * 0.99))]
    record(
        "event-to-match latency, file follower (before the bus)",
        value=f"p50 {m50:.1f} ms, p99 {m99:.1f} ms",
        anchor="k8shell documents ~305 ms",
        ratio=305.0 / m99,
        goal="measure",
    )
    record(
        "event-to-alert latency, file follower -> NATS",
        value=f"p50 {p50:.1f} ms, p99 {p99:.1f} ms ({len(samples)} alerts, "
        f"{follower.rotations} rotations, ~{RATE:,} events/s)",
        anchor="k8shell documents ~305 ms",
        ratio=305.0 / p99,
        goal="p99 <= 50 ms",
        met=p99 <= 50.0,
    )


async def main() -> None:
    print("worktrace:", flush=True)
    throughput()
    await latency()


if __name__ == "__main__":
    asyncio.run(main())

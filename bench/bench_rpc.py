"""Authz over gRPC with mutual TLS: p50/p99 latency at a fixed 1,000 decisions/s for 10 s.

Every input is distinct (its session id and source port change), so no cache could decide it.
The anchor is the same stream evaluated in-process (``Authorizer.decide_async``) at the same
fixed rate. Requests are sent open-loop (on a schedule, not after the previous answer), so a slow
answer shows up as latency (queueing included) instead of silently lowering the rate. The server
runs in its own process, as it does when services are split, so client and server do not share
one event loop. Goal (issue 13): remote p99 <= 10x in-process.

The machine running this is usually shared, and its load moves within seconds, so anchor and
remote are measured in alternation, ``ROUNDS`` times: each round's ratio compares two runs 10 s
apart, and the row reports the median round with every round's ratio and the load average, plus
the CPU each side spent per decision (which the load disturbs far less than latency). The
``AuthzClient`` the services use (one ``DecideStream``, adaptive batches) is measured every
round; one ``Decide`` call per decision once, as a reference; and once, the floor that gRPC
itself sets: a bare bidi echo of the same JSON bytes on the same kind of mTLS connection to the
same server process (no protobuf, no policy, no checks), so the report shows how much of the
remote cost is Stockade's and how much the transport's.
"""

from __future__ import annotations

import asyncio
import collections
import multiprocessing
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc
import orjson
from grpc import aio

from bench._report import record
from stockade.authz import Authorizer, Context, Resource, Subject, build_input
from stockade.core.settings import AuthzSettings, IdentitySettings
from stockade.identity import IdentityService, KeyRing
from stockade.rpc import AuthzClient, RpcServer, mtls_channel
from stockade.store import Store
from stockade.tls import CertificateFiles, DevCA, grpc_server_credentials

RATE = 1000
SECONDS = 10.0


def _input(i: int) -> dict[str, Any]:
    return build_input(
        "ssh.shell",
        Resource(kind="workspace", name="alice", owner="alice"),
        Context(
            user=Subject(name="alice", roles=("contractor",)),
            source_ip=f"203.0.113.{i % 256}",
            session_id=f"bench-{i:08d}",
        ),
    )


#: Decisions that came back denied (each input is allowed): a failed call, counted per run.
DENIED: list[str] = []
#: How late each decision started against its schedule. Latency is counted from the start (the
#: event loop's timers are only accurate to ~1 ms, which would swamp an in-process decision),
#: so a client that falls behind its schedule would hide queueing there: this shows it.
LATE: list[float] = []


async def _fixed_rate(decide: Callable[[int], Awaitable[Any]]) -> list[float]:
    latencies: list[float] = []
    pending: set[asyncio.Task[None]] = set()
    DENIED.clear()
    LATE.clear()

    async def one(i: int, due: float) -> None:
        started = time.perf_counter()
        LATE.append(started - due)
        decision = await decide(i)
        latencies.append(time.perf_counter() - started)
        if not decision.allow:
            DENIED.append("; ".join(decision.reasons))

    total = int(RATE * SECONDS)
    begin = time.perf_counter()
    for i in range(total):
        due = begin + i / RATE
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(i, due))
        pending.add(task)
        task.add_done_callback(pending.discard)
    await asyncio.gather(*pending)
    return latencies


def _percentiles(latencies: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(latencies, n=100)
    return cuts[49] * 1000, cuts[98] * 1000


@dataclass
class Run:
    """One 10 s run: p50/p99 (ms), p99 of the start's lag behind schedule (ms), failed calls,
    CPU per decision (us) on each side, the 1-minute load average at its end."""

    p50: float
    p99: float
    late99: float
    failed: int
    client_us: float
    server_us: float
    load: float


async def _serve(root: Path, conn: Connection) -> None:
    store = Store(f"sqlite:///{root / 'db.sqlite'}")
    await store.migrate()
    identity = IdentityService(
        store=store, settings=IdentitySettings(), keyring=KeyRing(root / "keys")
    )
    issued = DevCA(root / "tls").issue("api")
    tls = CertificateFiles(issued.cert, issued.key, issued.ca)
    server = RpcServer(identity=identity, authorizer=Authorizer(settings=AuthzSettings()), tls=tls)
    await server.start()
    echo = aio.server()
    echo.add_generic_rpc_handlers((_ECHO_HANDLER,))
    echo_port = echo.add_secure_port("127.0.0.1:0", grpc_server_credentials(tls))
    await echo.start()
    conn.send((server.port, echo_port))
    loop = asyncio.get_running_loop()
    while await loop.run_in_executor(None, conn.recv) == "cpu":  # until told to stop
        conn.send(time.process_time())
    await echo.stop(0)
    await server.stop(0)
    await store.close()


async def _echo(requests: Any, context: Any) -> Any:
    async for message in requests:
        yield message


#: The floor: a bidi method that answers each message with itself (bytes in, bytes out).
_ECHO_HANDLER = grpc.method_handlers_generic_handler(
    "bench.Echo", {"Stream": grpc.stream_stream_rpc_method_handler(_echo)}
)


@dataclass
class _Echoed:
    allow: bool = True
    reasons: tuple[str, ...] = ()


class _EchoClient:
    """One echo stream; each call writes the input's JSON and waits for its echo (FIFO)."""

    def __init__(self, channel: aio.Channel) -> None:
        self._call = channel.stream_stream("/bench.Echo/Stream")()
        self._waiting: collections.deque[asyncio.Future[_Echoed]] = collections.deque()
        self._queue: asyncio.Queue[bytes] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._write()), loop.create_task(self._read())]

    async def _write(self) -> None:
        while True:
            await self._call.write(await self._queue.get())

    async def _read(self) -> None:
        while True:
            if not isinstance(await self._call.read(), bytes):
                return
            self._waiting.popleft().set_result(_Echoed())

    async def decide(self, doc: dict[str, Any]) -> _Echoed:
        future = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        self._queue.put_nowait(orjson.dumps(doc))
        return await future

    def close(self) -> None:
        self._call.cancel()
        for task in self._tasks:
            task.cancel()


def _server_process(root: str, conn: Connection) -> None:
    asyncio.run(_serve(Path(root), conn))


async def _server_cpu(conn: Connection) -> float:
    conn.send("cpu")
    return float(await asyncio.get_running_loop().run_in_executor(None, conn.recv))


async def _measure(decide: Callable[[int], Awaitable[Any]], conn: Connection | None = None) -> Run:
    client0 = time.process_time()
    server0 = await _server_cpu(conn) if conn is not None else 0.0
    latencies = await _fixed_rate(decide)
    client = (time.process_time() - client0) / len(latencies) * 1e6
    server = (await _server_cpu(conn) - server0) / len(latencies) * 1e6 if conn else 0.0
    p50, p99 = _percentiles(latencies)
    late99 = statistics.quantiles(LATE, n=100)[98] * 1000
    return Run(p50, p99, late99, len(DENIED), client, server, os.getloadavg()[0])


def _row(name: str, rounds: list[tuple[Run, Run]], *, judged: bool = True) -> None:
    """Record the round with the median ratio; show every round's. ``judged`` False: a
    reference measured against the same anchor, not held to the goal."""
    ratios = [remote.p99 / local.p99 for local, remote in rounds]
    order = sorted(range(len(rounds)), key=ratios.__getitem__)
    local, remote = rounds[order[len(order) // 2]]
    ratio = ratios[order[len(order) // 2]]
    failed = sum(r.failed for _, r in rounds)
    shown = ", ".join(
        f"{x:.1f}x at load {r.load:.1f}" for x, (_, r) in zip(ratios, rounds, strict=True)
    )
    record(
        f"remote authz p99 at {RATE}/s, distinct inputs ({name})",
        value=(
            f"p50 {remote.p50:.3f} ms / p99 {remote.p99:.3f} ms, {failed} failed;"
            f" CPU per decision client {remote.client_us:.0f} us + server"
            f" {remote.server_us:.0f} us; rounds {shown}"
        ),
        anchor=(
            f"in-process p50 {local.p50:.3f} ms / p99 {local.p99:.3f} ms,"
            f" CPU {local.client_us:.0f} us"
        ),
        ratio=ratio,
        goal="p99 <= 10x in-process" if judged else "measure",
        met=(ratio <= 10 and failed == 0) if judged else None,
    )


def _show(name: str, run: Run) -> None:
    print(
        f"  {name}: p50 {run.p50:.3f} ms / p99 {run.p99:.3f} ms (start lag p99"
        f" {run.late99:.3f} ms), {run.failed} failed,"
        f" CPU/decision {run.client_us:.0f} + {run.server_us:.0f} us, load {run.load:.2f}",
        flush=True,
    )
    if DENIED:
        print(f"    e.g. {DENIED[0]}", flush=True)


async def main() -> None:
    rounds = int(os.environ.get("STOCKADE_BENCH_RPC_ROUNDS", "3"))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        DevCA(root / "tls").issue("api")
        ours, theirs = multiprocessing.Pipe()
        proc = multiprocessing.get_context("spawn").Process(
            target=_server_process, args=(tmp, theirs)
        )
        proc.start()
        try:
            port, echo_port = ours.recv()
            authorizer = Authorizer(settings=AuthzSettings())
            docs = [_input(i) for i in range(int(RATE * SECONDS) + 1)]
            print(f"authz at a fixed {RATE} decisions/s for {SECONDS:.0f}s, every input distinct")
            # the gateway's certificate: authz answers only its callers (rpc._authz.CALLERS)
            issued = DevCA(root / "tls").issue("gateway")
            tls = CertificateFiles(issued.cert, issued.key, issued.ca)
            streamed: list[tuple[Run, Run]] = []
            unary: list[tuple[Run, Run]] = []
            floor: list[tuple[Run, Run]] = []
            async with (
                mtls_channel("127.0.0.1", port, tls) as channel,
                mtls_channel("127.0.0.1", echo_port, tls) as echo_channel,
            ):
                echo = _EchoClient(echo_channel)
                await echo.decide(_input(-1))
                client = AuthzClient(channel, target="bench", timeout=30)
                single = AuthzClient(channel, target="bench", timeout=30, max_batch=1)
                for c in (client, single):
                    await c.decide_async(_input(-1))  # handshake outside the measurement
                for n in range(rounds):
                    print(f"round {n + 1} of {rounds}", flush=True)
                    local = await _measure(lambda i: authorizer.decide_async(docs[i]))
                    _show("in-process", local)
                    frames = client.batches
                    remote = await _measure(lambda i: client.decide_async(docs[i]), ours)
                    _show("DecideStream", remote)
                    print(f"    {len(docs) - 1} decisions in {client.batches - frames} frames")
                    streamed.append((local, remote))
                    if n == 0:
                        remote = await _measure(lambda i: single.decide_async(docs[i]), ours)
                        _show("one Decide call each", remote)
                        unary.append((local, remote))
                        remote = await _measure(lambda i: echo.decide(docs[i]), ours)
                        _show("bare gRPC echo (the floor)", remote)
                        floor.append((local, remote))
                echo.close()
            _row("gRPC + mTLS, the services' client: one DecideStream, adaptive batches", streamed)
            _row("gRPC + mTLS, one Decide call each (reference)", unary)
            _row("gRPC + mTLS, bare bidi echo, no authz (the floor)", floor, judged=False)
        finally:
            ours.send("stop")
            proc.join(timeout=30)

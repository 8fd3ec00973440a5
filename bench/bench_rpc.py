"""Authz over gRPC with mutual TLS: p50/p99 latency at a fixed 1,000 decisions/s for 10 s.

Every input is distinct (its session id and source port change), so no cache could decide it.
The anchor is the same stream evaluated in-process (``Authorizer.decide_async``) at the same
fixed rate in the same run, so the ratio is the price of the network hop and TLS. Two remote
clients are measured: one ``Decide`` per decision, and the batching client (concurrent
decisions share one ``BatchDecide``). Goal (issue 13): remote p99 <= 10x in-process.
Requests are sent open-loop (on a schedule, not after the previous answer), so a slow answer
shows up as latency instead of silently lowering the rate. The server runs in its own process,
as it does when services are split, so client and server do not share one event loop.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bench._report import record
from stockade.authz import Authorizer, Context, Resource, Subject, build_input
from stockade.core.settings import AuthzSettings, IdentitySettings
from stockade.identity import IdentityService, KeyRing
from stockade.rpc import AuthzClient, RpcServer, mtls_channel
from stockade.store import Store
from stockade.tls import CertificateFiles, DevCA

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


async def _fixed_rate(decide: Callable[[int], Awaitable[Any]]) -> list[float]:
    latencies: list[float] = []
    pending: set[asyncio.Task[None]] = set()
    DENIED.clear()

    async def one(i: int) -> None:
        started = time.perf_counter()
        decision = await decide(i)
        latencies.append(time.perf_counter() - started)
        if not decision.allow:
            DENIED.append("; ".join(decision.reasons))

    total = int(RATE * SECONDS)
    begin = time.perf_counter()
    for i in range(total):
        delay = begin + i / RATE - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(i))
        pending.add(task)
        task.add_done_callback(pending.discard)
    await asyncio.gather(*pending)
    return latencies


def _report(name: str, latencies: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(latencies, n=100)
    p50, p99 = cuts[49] * 1000, cuts[98] * 1000
    return p50, p99


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
    conn.send(server.port)
    await asyncio.get_running_loop().run_in_executor(None, conn.recv)  # until told to stop
    await server.stop(0)
    await store.close()


def _server_process(root: str, conn: Connection) -> None:
    asyncio.run(_serve(Path(root), conn))


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        DevCA(root / "tls").issue("api")
        ours, theirs = multiprocessing.Pipe()
        proc = multiprocessing.get_context("spawn").Process(
            target=_server_process, args=(tmp, theirs)
        )
        proc.start()
        try:
            port = ours.recv()
            authorizer = Authorizer(settings=AuthzSettings())
            docs = [_input(i) for i in range(int(RATE * SECONDS) + 1)]
            print(f"authz at a fixed {RATE} decisions/s for {SECONDS:.0f}s, every input distinct")
            local = _report(
                "in-process (anchor)", await _fixed_rate(lambda i: authorizer.decide_async(docs[i]))
            )
            issued = DevCA(root / "tls").issue("api")
            tls = CertificateFiles(issued.cert, issued.key, issued.ca)
            results = {}
            failed: dict[str, int] = {}
            async with mtls_channel("127.0.0.1", port, tls) as channel:
                for name, batch in (
                    ("gRPC + mTLS, one call each", 1),
                    ("gRPC + mTLS, batched", 64),
                ):
                    client = AuthzClient(channel, target="bench", timeout=30, max_batch=batch)
                    await client.decide_async(_input(-1))  # handshake outside the measurement
                    results[name] = _report(
                        name, await _fixed_rate(lambda i, c=client: c.decide_async(docs[i]))
                    )
                    failed[name] = len(DENIED)
                    if DENIED:
                        print(f"  {len(DENIED)} failed calls, e.g. {DENIED[0]}")
                    if batch > 1:
                        print(f"  {RATE * SECONDS:.0f} decisions in {client.batches} calls")
            anchor = f"in-process p50 {local[0]:.3f} ms / p99 {local[1]:.3f} ms"
            for name, (p50, p99) in results.items():
                ratio = p99 / local[1]
                record(
                    f"remote authz p99 at {RATE}/s, distinct inputs ({name})",
                    value=f"p50 {p50:.3f} ms / p99 {p99:.3f} ms, {failed[name]} failed",
                    anchor=anchor,
                    ratio=ratio,
                    goal="p99 <= 10x in-process",
                    met=ratio <= 10 and failed[name] == 0,
                )
        finally:
            ours.send("stop")
            proc.join(timeout=30)

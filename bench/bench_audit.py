"""The audit store: ingest rate, search latency over 1,000,000 rows, recording overhead.

1. ingest: INGEST events (half ``stockade.auth.failed`` on STOCKADE_AUTH, half authz decisions
   on STOCKADE_AUDIT) are published to an embedded nats-server first; then the audit service
   consumes them into PostgreSQL (parsed, deduplicated, chained, committed before each
   cumulative ack, heads signed) and is timed until every row is stored. Anchor: the same bus
   consumers (same streams, batch and cumulative acks) whose handlers do nothing, timed until
   every message is acknowledged. Goal: >= 50% of the anchor's rate.
2. search: ROWS rows in PostgreSQL (USERS users over 30 days, bulk-loaded); ``GET
   /v1/audit/search?user=U&since=1d`` through the broker's HTTPS endpoint, with a real token
   and policy decision, timed server-side (``Server-Timing: total``) after a warm-up, for
   SEARCHES random users; anchor: the same SQL (what the endpoint sends, literal binds) in one
   ``psql`` session with ``\\timing``. Goal: <= 1.5x at p50 and p99. The endpoint's own split
   (auth + policy vs search + JSON) is printed as well.
3. recording: RECORD_MB of terminal output in 32 KiB reads copied to a file descriptor, with and
   without a :class:`~stockade.gateway.CastRecorder` recording each read (in an event loop,
   as the session runner does). Goal: the recorded copy keeps >= 80% of the unrecorded rate
   (measured at the recorder; the through-ssh figure is the gateway benchmark's).
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import ssl
import subprocess
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from sqlalchemy import select
from sqlalchemy.dialects import postgresql

from bench._report import record
from stockade.audit import AuditQuery, AuditSearch, AuditService
from stockade.authz import Authorizer
from stockade.broker import BrokerServer
from stockade.bus import Bus, Delivery, EmbeddedNats
from stockade.core import events as ev
from stockade.core.logging import configure_logging
from stockade.core.settings import AuditSettings, AuthzSettings, Settings
from stockade.gateway import CastRecorder
from stockade.identity import IdentityService, KeyRing, PasswordHasher
from stockade.store import AuditEventRow, Store
from stockade.tls import DevCA

INGEST = 40_000
ROWS = 1_000_000
USERS = 1000
SEARCHES = 400
WARMUP = 50
RECORD_MB = 256
PG = os.environ.get("STOCKADE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


def _psql(url: str, sql: str) -> str:
    return subprocess.run(
        ["psql", url, "-q", "-X", "-v", "ON_ERROR_STOP=1", "-c", sql],
        check=True,
        capture_output=True,
        text=True,
    ).stdout


class _Schema:
    """A fresh PostgreSQL schema, dropped afterwards."""

    def __enter__(self) -> str:
        self.name = f"bench_{uuid.uuid4().hex[:10]}"
        _psql(PG, f"CREATE SCHEMA {self.name}")
        sep = "&" if "?" in PG else "?"
        return f"{PG}{sep}options=-csearch_path%3D{self.name}"

    def __exit__(self, *_: object) -> None:
        _psql(PG, f"DROP SCHEMA {self.name} CASCADE")


def _events(count: int) -> list[ev.Event]:
    out: list[ev.Event] = []
    for i in range(count):
        if i % 2:
            out.append(
                ev.AuthFailed(client_ip=f"198.51.100.{i % 250 + 1}", client_port=i % 60000,
                              username=f"user{i % 97}", method="password",
                              reason="bad_password", gateway_id="bench")
            )  # fmt: skip
        else:
            out.append(
                ev.DecisionRecord(action="ssh.connect", resource={"kind": "workspace",
                                  "name": f"ws{i % 31}"}, user=f"user{i % 97}",
                                  allow=i % 3 != 0, reasons=[], obligations={}, count=1 + i % 4)
            )  # fmt: skip
    return out


async def _fresh_streams(bus: Bus) -> None:
    await bus.ensure_streams()
    for stream in (ev.STREAM_AUTH, ev.STREAM_AUDIT):
        await bus.js.purge_stream(stream)


async def _noop_rate(bus: Bus, total: int, batch: int) -> float:
    counted = [0]
    done = asyncio.Event()
    stop = asyncio.Event()
    consumers = []
    for stream in (ev.STREAM_AUTH, ev.STREAM_AUDIT):
        consumer = bus.consumer(
            stream=stream, durable=f"bench-noop-{stream.lower()}", batch=batch,
            cumulative_ack=True, poll_interval=0.5,
        )  # fmt: skip

        async def handle(_delivery: Delivery) -> None:
            counted[0] += 1
            if counted[0] >= total:
                done.set()

        for pattern in ev.STREAMS[stream]:
            consumer.on(pattern)(handle)
        consumers.append(consumer)
    started = time.perf_counter()
    tasks = [asyncio.create_task(c.run(stop)) for c in consumers]
    await asyncio.wait_for(done.wait(), 300)
    for consumer in consumers:  # the last chunk's ack is part of the work
        for _ in range(1000):
            state = await consumer.state()
            if state.num_ack_pending == 0 and state.num_pending == 0:
                break
            await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - started
    stop.set()
    await asyncio.gather(*tasks)
    return total / elapsed


async def _audit_rate(bus: Bus, store: Store, data: Path, total: int, batch: int) -> float:
    settings = AuditSettings(batch=batch, head_every_rows=1000, head_every_seconds=10)
    service = AuditService(bus=bus, store=store, settings=settings, data_dir=data,
                           poll_interval=0.5)  # fmt: skip
    search = AuditSearch(store)
    started = time.perf_counter()
    await service.start()
    for _ in range(60_000):  # at most 10 minutes
        if await search.newest_id() >= total:
            break
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - started
    await service.stop()
    return total / elapsed


async def bench_ingest(tmp: Path) -> None:
    batch = 512
    nats = EmbeddedNats(tmp / "nats", connect_timeout=10)
    url = await nats.start()
    try:
        bus = await Bus.connect(url, name="bench-audit")
        events = _events(INGEST)
        await _fresh_streams(bus)
        await bus.publish_many(events, ack_timeout=120)
        anchor = await _noop_rate(bus, INGEST, batch)
        with _Schema() as db:
            store = Store(db)
            await store.migrate()
            ours = await _audit_rate(bus, store, tmp / "data", INGEST, batch)
            await store.close()
        await bus.close()
    finally:
        await nats.stop()
    ratio = ours / anchor
    record(
        "audit ingest events/s into PostgreSQL",
        value=f"{ours:,.0f}/s",
        anchor=f"pull+ack without storing {anchor:,.0f}/s",
        ratio=round(ratio, 2),
        goal=">= 0.50x",
        met=ratio >= 0.5,
    )


async def _bulk_load(store: Store, now: datetime) -> None:
    """ROWS rows through COPY (setup, not measured): the indexed columns and payloads as the
    service writes them; the hash columns hold placeholders (the chain is not what is timed)."""
    rng = random.Random(11)
    start = now - timedelta(days=30)
    span = 30 * 86400
    offsets = sorted(rng.randrange(span * 1000) / 1000 for _ in range(ROWS))
    columns = [c.name for c in AuditEventRow.__table__.c]
    filler = "0" * 64
    rows = []
    for i, offset in enumerate(offsets, start=1):
        at = start + timedelta(seconds=offset)
        user = f"user{rng.randrange(USERS)}"
        ip = f"198.51.100.{i % 250 + 1}"
        if i % 2:
            payload = (
                f'{{"v":1,"at":"{at.isoformat()}","client_ip":"{ip}","client_port":{i % 60000},'
                f'"username":"{user}","method":"password","reason":"bad_password",'
                '"gateway_id":"bench"}'
            )
            row = (i, ev.STREAM_AUTH, i, ev.SUBJECT_AUTH_FAILED, 1, at, at, "auth.failed", user,
                   "deny", ip, None, 1, payload, filler, filler)  # fmt: skip
        else:
            allow = i % 3 != 0
            payload = (
                f'{{"v":1,"at":"{at.isoformat()}","action":"ssh.connect","resource":'
                f'{{"kind":"workspace","name":"ws"}},"user":"{user}","allow":'
                f'{"true" if allow else "false"},"reasons":[],"obligations":{{}},"count":1}}'
            )
            row = (i, ev.STREAM_AUDIT, i, ev.SUBJECT_AUTHZ_DECISION, 1, at, at, "ssh.connect",
                   user, "allow" if allow else "deny", None, None, 1, payload, filler,
                   filler)  # fmt: skip
        rows.append(row)
    async with store.engine.connect() as conn:
        raw = await conn.get_raw_connection()
        driver = raw.driver_connection
        assert driver is not None
        for at in range(0, len(rows), 100_000):
            await driver.copy_records_to_table(
                "audit_events", records=rows[at : at + 100_000], columns=columns
            )
        await driver.execute("ANALYZE audit_events")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _psql_timings(url: str, statements: list[str]) -> list[float]:
    script = "\\timing on\n" + "".join(f"{s};\n" for s in statements)
    out = subprocess.run(
        ["psql", url, "-q", "-X", "-o", "/dev/null"], input=script, check=True,
        capture_output=True, text=True,
    ).stdout  # fmt: skip
    return [float(m) for m in re.findall(r"^Time: ([0-9.]+) ms", out, re.MULTILINE)]


async def bench_search(tmp: Path) -> None:
    now = datetime.now(UTC)
    with _Schema() as db:
        store = Store(db)
        await store.migrate()
        loaded = time.perf_counter()
        await _bulk_load(store, now)
        load_s = time.perf_counter() - loaded
        identity = IdentityService(
            store=store, settings=Settings().identity, keyring=KeyRing(tmp / "keys"),
            password_hasher=PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1),
        )  # fmt: skip
        await identity.add_user("erin", roles=["auditor"])
        token = await identity.issue_token("erin", ttl=timedelta(hours=1))
        server = BrokerServer.from_settings(
            Settings(broker={"port": 0}), identity=identity,
            authz=Authorizer(settings=AuthzSettings(decision_log=False)), publisher=None,
            ca=DevCA(tmp / "ca"), audit=AuditSearch(store),
        )  # fmt: skip
        await server.start()
        rng = random.Random(5)
        users = [f"user{rng.randrange(USERS)}" for _ in range(WARMUP + SEARCHES)]
        totals: list[float] = []
        searches: list[float] = []
        sqls: list[str] = []
        trust = ssl.create_default_context(cafile=str(server.ca_path))
        try:
            async with httpx.AsyncClient(base_url=server.url, verify=trust, timeout=30) as client:
                for n, user in enumerate(users):
                    answer = await client.get(
                        "/v1/audit/search", params={"user": user, "since": "1d"},
                        headers={"Authorization": f"Bearer {token}"},
                    )  # fmt: skip
                    answer.raise_for_status()
                    timing = dict(
                        re.findall(r"(\w+);dur=([0-9.]+)", answer.headers["server-timing"])
                    )
                    if n >= WARMUP:
                        totals.append(float(timing["total"]))
                        searches.append(float(timing["search"]))
                    query = AuditQuery.parse(user=user, since="1d")
                    statement = (
                        query.where(select(*AuditEventRow.__table__.c))
                        .order_by(AuditEventRow.id.desc())
                        .limit(query.limit + 1)
                    )
                    sqls.append(str(statement.compile(
                        dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}
                    )))  # fmt: skip
        finally:
            await server.stop()
        psql = _psql_timings(db.replace("+asyncpg", ""), sqls)[WARMUP:]
        await store.close()
    for name, ours in (("p50", 0.5), ("p99", 0.99)):
        mine = _percentile(totals, ours)
        anchor = _percentile(psql, ours)
        ratio = mine / anchor
        record(
            f"audit search --user U --since 1d over {ROWS:,} rows, {name}",
            value=f"{mine:.2f} ms (search+JSON {_percentile(searches, ours):.2f} ms)",
            anchor=f"psql \\timing {anchor:.2f} ms",
            ratio=round(ratio, 2),
            goal="<= 1.5x",
            met=ratio <= 1.5,
        )
    record(f"audit bulk load of {ROWS:,} rows by COPY (setup)", value=f"{load_s:.1f} s")


async def _copy(source: Path, fd: int, recorder: CastRecorder | None) -> float:
    """What a session's pump does: read the process's output from a pipe (``cat``), write it
    to the channel (here /dev/null), and hand each read to the recorder."""
    started = time.perf_counter()
    proc = subprocess.Popen(["cat", str(source)], stdout=subprocess.PIPE)  # noqa: ASYNC220
    assert proc.stdout is not None
    pipe = proc.stdout.fileno()
    reads = 0
    while True:
        chunk = os.read(pipe, 65536)
        if not chunk:
            break
        os.write(fd, chunk)
        if recorder is not None:
            recorder.output(chunk)
        reads += 1
        if reads % 64 == 0:
            await asyncio.sleep(0)  # a session's pump yields to the loop between reads
    proc.wait()
    proc.stdout.close()
    if recorder is not None:
        recorder.close()
    return time.perf_counter() - started


async def bench_recording(tmp: Path) -> None:
    line = b"\x1b[32mdrwxr-xr-x\x1b[0m 2 alice alice 4096 Dec  1 10:00 some-directory-name\r\n"
    block = (line * (1048576 // len(line) + 1))[:1048576]
    source = tmp / "output.bin"
    with source.open("wb") as out:
        for _ in range(RECORD_MB):
            out.write(block)
    fd = os.open(os.devnull, os.O_WRONLY)
    try:
        plain = min([await _copy(source, fd, None) for _ in range(2)])
        recorded = []
        for attempt in range(2):
            cast = tmp / f"bench-{attempt}.cast"
            recorder = CastRecorder(
                cast, width=200, height=50, env={}, title="bench", record_input=False,
                max_bytes=1 << 40,
            )  # fmt: skip
            recorded.append(await _copy(source, fd, recorder))
            cast.unlink()
    finally:
        os.close(fd)
        source.unlink()
    ours = min(recorded)
    ratio = plain / ours
    record(
        f"recording overhead: {RECORD_MB} MB of output through the recorder",
        value=f"{RECORD_MB / ours:,.0f} MB/s recorded",
        anchor=f"{RECORD_MB / plain:,.0f} MB/s unrecorded pipe copy",
        ratio=round(ratio, 2),
        goal=">= 0.80x",
        met=ratio >= 0.8,
    )


def main() -> None:
    configure_logging("warning", False)
    with tempfile.TemporaryDirectory(prefix="bench-audit-") as tmp:
        root = Path(tmp)
        asyncio.run(bench_recording(root))
        asyncio.run(bench_ingest(root))
        asyncio.run(bench_search(root))


if __name__ == "__main__":
    main()

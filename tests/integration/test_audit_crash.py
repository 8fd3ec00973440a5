"""``kill -9`` of the audit consumer mid-burst of 10,000 events: after a restart every event is
in the store exactly once, and the chain verifies (acceptance 2), on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nats.js.errors
from sqlalchemy import text

from stockade.audit import load_public_key, verify_store
from stockade.bus import Bus
from stockade.core import events as ev
from stockade.store import Store

SCRIPT = Path(__file__).with_name("audit_consumer.py")
BURST = 10_000


def _start(nats_url: str, database_url: str, data_dir: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), nats_url, database_url, str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    for _ in range(100):  # log lines come first
        line = proc.stdout.readline()
        if line.strip() == "ready" or not line:
            break
    assert line.strip() == "ready"
    return proc


def _kill(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    if proc.stdout is not None:
        proc.stdout.close()


async def _counts(store: Store) -> tuple[int, int]:
    async with store.engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT count(*), count(DISTINCT stream_seq) FROM audit_events "
                    "WHERE stream = 'STOCKADE_AUTH'"
                )
            )
        ).one()
    return int(row[0]), int(row[1])


async def test_kill_9_mid_burst_loses_and_duplicates_nothing(
    nats_url: str, database_url: str, tmp_path: Path
) -> None:
    bus = await Bus.connect(nats_url, name="audit-crash-test")
    await bus.ensure_streams()
    for stream in (ev.STREAM_AUTH, ev.STREAM_AUDIT):
        await bus.js.purge_stream(stream)
        for durable in ("audit", "audit-auth"):
            with contextlib.suppress(nats.js.errors.NotFoundError):  # absent
                await bus.js.delete_consumer(stream, durable)
    store = Store(database_url)
    await store.migrate()
    first_seq = await bus.last_sequence(ev.STREAM_AUTH) + 1
    proc = _start(nats_url, database_url, tmp_path)
    try:
        events = [
            ev.AuthFailed(client_ip=f"198.51.100.{i % 250 + 1}", client_port=i % 65535,
                          username=f"u{i % 50}", method="password", reason="bad_password",
                          gateway_id="gw")
            for i in range(BURST)
        ]  # fmt: skip
        publish = asyncio.create_task(bus.publish_many(events, ack_timeout=120))
        stored = 0
        deadline = time.monotonic() + 60
        while stored < 500 and time.monotonic() < deadline:  # mid-burst: some stored, not all
            stored, _ = await _counts(store)
            await asyncio.sleep(0.01)
        _kill(proc)
        killed_at, _ = await _counts(store)
        assert 0 < killed_at < BURST, killed_at
        assert await publish == BURST
        proc = _start(nats_url, database_url, tmp_path)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            total, distinct = await _counts(store)
            if total >= BURST:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # anything redelivered late would show up now
        total, distinct = await _counts(store)
        assert (total, distinct) == (BURST, BURST)
        async with store.engine.connect() as conn:
            low, high = (
                await conn.execute(
                    text("SELECT min(stream_seq), max(stream_seq) FROM audit_events")
                )
            ).one()
        assert (low, high) == (first_seq, first_seq + BURST - 1)
        _kill(proc)
        report = await verify_store(
            store, tmp_path / "audit" / "heads.jsonl", load_public_key(
                tmp_path / "keys" / "audit_heads.pem"
            ),
        )  # fmt: skip
        assert report.ok, report.problem
        assert report.rows == BURST
    finally:
        _kill(proc)
        await store.close()
        await bus.close()

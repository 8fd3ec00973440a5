"""Identity key lookup latency (``IdentityService.lookup_key``) with 100k users and 200k keys.

Runs on SQLite (a temporary file) and on PostgreSQL (a dedicated schema in
``$STOCKADE_TEST_PG_URL``, dropped afterwards; skipped when unreachable). Users and keys are bulk
inserted through the store, then random (user, fingerprint) pairs are looked up one at a time
and p50/p99 of the per-call latency are printed per database.

Anchor, measured in the same run on the same database and pairs: the same indexed SELECT (the
statement ``lookup_key`` runs) through the same driver with no ORM and no Stockade code: a plain
aiosqlite connection, or an asyncpg connection (its statement cache prepares it). The two are
interleaved, lookup by lookup, so load from other processes hits both alike. Goal: p50 within
1.5x of the raw query's.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import socket
import statistics
import struct
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiosqlite
import asyncpg
from sqlalchemy import insert, text

from bench._report import record
from stockade.core.settings import IdentitySettings
from stockade.identity import IdentityService, KeyRing
from stockade.store import SshKeyRow, Store, UserRow

USERS = 100_000
KEYS_PER_USER = 2
LOOKUPS = 3_000
WARMUP = 200
BATCH = 5_000
PG_URL = os.environ.get("STOCKADE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


def _s(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _key(index: int) -> tuple[str, str]:
    """(fingerprint, public key) of a deterministic ed25519-shaped key blob."""
    blob = _s(b"ssh-ed25519") + _s(hashlib.sha256(index.to_bytes(8, "big")).digest())
    fp = "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return fp, "ssh-ed25519 " + base64.b64encode(blob).decode()


async def _populate(store: Store) -> list[tuple[str, str]]:
    now = datetime.now(UTC)
    pairs: list[tuple[str, str]] = []
    users: list[dict[str, Any]] = [
        {
            "id": i + 1,
            "name": f"u{i:06d}",
            "display_name": "",
            "email": "",
            "roles": ["dev"],
            "groups": [],
            "disabled": False,
            "created_at": now,
        }
        for i in range(USERS)
    ]
    keys: list[dict[str, Any]] = []
    for i in range(USERS):
        for k in range(KEYS_PER_USER):
            fp, public = _key(i * KEYS_PER_USER + k)
            keys.append(
                {
                    "user_id": i + 1,
                    "fingerprint": fp,
                    "key_type": "ssh-ed25519",
                    "bits": 256,
                    "comment": "",
                    "public_key": public,
                    "created_at": now,
                }
            )
            pairs.append((f"u{i:06d}", fp))
    if store.dialect == "postgresql":
        await _copy(store, "users", users)
        await _copy(store, "ssh_keys", keys)
        return pairs
    for table, rows in ((UserRow, users), (SshKeyRow, keys)):
        for start in range(0, len(rows), BATCH):
            async with store.transaction() as session:
                await session.execute(insert(table), rows[start : start + BATCH])
    return pairs


async def _copy(store: Store, table: str, rows: list[dict[str, Any]]) -> None:
    """PostgreSQL COPY through the store's own asyncpg connection (much faster than INSERT)."""
    columns = list(rows[0])
    records = [
        tuple(json.dumps(v) if isinstance(v, list) else v for v in row.values()) for row in rows
    ]
    async with store.transaction() as session:
        connection = await session.connection()
        raw = await connection.get_raw_connection()
        driver = raw.driver_connection
        assert driver is not None
        await driver.copy_records_to_table(table, records=records, columns=columns)
        await session.execute(text(f"ANALYZE {table}"))


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class _Raw:
    """The anchor: one statement on a bare driver connection (no SQLAlchemy, no Stockade)."""

    def __init__(self, url: str, sql: str, binds: tuple[str, ...]) -> None:
        self.url, self.sql, self.binds = url, sql, binds
        self.conn: Any = None

    async def open(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme == "sqlite":
            self.conn = await aiosqlite.connect(parts.path, isolation_level=None)
        else:
            query = dict(p.split("=", 1) for p in parts.query.split("&") if p)
            options = query.get("options", "").replace("%3D", "=")
            settings = dict([options.removeprefix("-c").split("=", 1)]) if options else {}
            self.conn = await asyncpg.connect(
                host=parts.hostname, port=parts.port or 5432, user=parts.username,
                database=parts.path.lstrip("/"), server_settings=settings,
            )  # fmt: skip

    async def lookup(self, user: str, fp: str) -> list[Any]:
        params = {"name": user, "fingerprint": fp}
        values = [params[name] for name in self.binds]
        if isinstance(self.conn, aiosqlite.Connection):
            return list(await self.conn.execute_fetchall(self.sql, values))
        return list(await self.conn.fetch(self.sql, *values))

    async def close(self) -> None:
        await self.conn.close()


async def _measure(label: str, url: str, keys_dir: Path) -> None:
    store = Store(url)
    raw: _Raw | None = None
    try:
        await store.migrate()
        started = time.perf_counter()
        pairs = await _populate(store)
        loaded = time.perf_counter() - started
        service = IdentityService(
            store=store, settings=IdentitySettings(), keyring=KeyRing(keys_dir)
        )
        prepared = service._queries.lookup_key  # the statement lookup_key runs
        raw = _Raw(url, prepared.sql, prepared.binds)
        await raw.open()
        rng = random.Random(7)
        sample = [rng.choice(pairs) for _ in range(WARMUP + LOOKUPS)]
        latencies: list[float] = []
        anchors: list[float] = []
        for i, (user, fp) in enumerate(sample):
            t0 = time.perf_counter()
            found = await service.lookup_key(user, fp)
            t1 = time.perf_counter()
            rows = await raw.lookup(user, fp)
            t2 = time.perf_counter()
            if found is None or found.name != user or len(rows) != len(found.keys):
                raise RuntimeError(f"lookup of {user} {fp} failed")
            if i >= WARMUP:
                latencies.append(t1 - t0)
                anchors.append(t2 - t1)
        p50, p99 = _pct(latencies, 0.50) * 1e3, _pct(latencies, 0.99) * 1e3
        a50, a99 = _pct(anchors, 0.50) * 1e3, _pct(anchors, 0.99) * 1e3
        print(f"  {label}: loaded in {loaded:.1f}s; lookup_key mean "
              f"{statistics.fmean(latencies) * 1e3:.3f} ms, raw mean "
              f"{statistics.fmean(anchors) * 1e3:.3f} ms")  # fmt: skip
        record(
            f"identity lookup_key, {label} ({USERS} users, {USERS * KEYS_PER_USER} keys)",
            value=f"p50 {p50:.3f} ms, p99 {p99:.3f} ms ({LOOKUPS} lookups)",
            anchor=f"raw SELECT via {'aiosqlite' if label == 'sqlite' else 'asyncpg'}: "
            f"p50 {a50:.3f} ms, p99 {a99:.3f} ms",
            ratio=p50 / a50,
            goal="p50 <= 1.5x",
            met=p50 / a50 <= 1.5,
        )
    finally:
        if raw is not None and raw.conn is not None:
            await raw.close()
        await store.close()


def _pg_reachable() -> bool:
    parts = urlsplit(PG_URL)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5432), 1):
            return True
    except OSError:
        return False


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        await _measure("sqlite", f"sqlite:///{Path(tmp) / 'bench.db'}", Path(tmp) / "keys")
        if not _pg_reachable():
            record("identity lookup_key, postgresql", value=f"skipped: {PG_URL} unreachable")
            return
        schema = f"bench_{uuid.uuid4().hex[:12]}"
        admin = Store(PG_URL)
        try:
            async with admin.transaction() as session:
                await session.execute(text(f"CREATE SCHEMA {schema}"))
            sep = "&" if "?" in PG_URL else "?"
            await _measure(
                "postgresql", f"{PG_URL}{sep}options=-csearch_path%3D{schema}", Path(tmp) / "keys"
            )
        finally:
            async with admin.transaction() as session:
                await session.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
            await admin.close()

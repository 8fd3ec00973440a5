"""Fixtures shared by the whole suite: free ports, a real NATS server, database URLs.

Servers are real processes on loopback with free ports, started here and stopped at the end.
Under ``CI=true`` a missing PostgreSQL fails the run instead of skipping.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from stockade.bus import EmbeddedNats

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
PG_URL = os.environ.get("STOCKADE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float = 10.0) -> None:
    """Block until ``host:port`` accepts TCP connections (bounded by ``timeout``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"{host}:{port} did not open within {timeout}s")


@pytest.fixture(autouse=True)
def _isolated_logging_config() -> Iterator[None]:
    """Commands under test call configure_logging; no test leaks its logging setup to the next."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


@pytest.fixture(scope="session")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real nats-server with JetStream on a free loopback port, for the whole session.

    Started through :class:`stockade.bus.EmbeddedNats`, exactly as ``stockade up`` starts it.
    """
    server = EmbeddedNats(tmp_path_factory.mktemp("nats"), connect_timeout=10.0)
    url = asyncio.run(server.start())
    try:
        yield url
    finally:
        asyncio.run(server.stop())


def _pg_reachable() -> bool:
    parsed = urllib.parse.urlsplit(PG_URL)
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 5432), 1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def pg_base_url() -> str:
    """The PostgreSQL test database URL; skips locally and fails in CI when unreachable."""
    if not _pg_reachable():
        message = f"PostgreSQL not reachable at {PG_URL} (set STOCKADE_TEST_PG_URL)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return PG_URL


@pytest.fixture
def pg_schema_url(pg_base_url: str) -> Iterator[str]:
    """A PostgreSQL URL whose ``search_path`` is a fresh schema, dropped afterwards.

    Concurrent test runs share the ``test`` database without seeing each other's tables.
    """
    schema = f"t_{uuid.uuid4().hex[:12]}"
    subprocess.run(["psql", pg_base_url, "-q", "-c", f"CREATE SCHEMA {schema}"], check=True)
    sep = "&" if "?" in pg_base_url else "?"
    try:
        yield f"{pg_base_url}{sep}options=-csearch_path%3D{schema}"
    finally:
        subprocess.run(
            ["psql", pg_base_url, "-q", "-c", f"DROP SCHEMA {schema} CASCADE"],
            check=False,
            capture_output=True,
        )


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each store test runs on SQLite (a file in tmp_path) and on PostgreSQL (own schema)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'stockade.db'}"
    return str(request.getfixturevalue("pg_schema_url"))

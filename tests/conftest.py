"""Fixtures shared by the whole suite: free ports, a real NATS server, database URLs.

Servers are real processes on loopback with free ports, started here and stopped at the end.
Under ``CI=true`` a missing PostgreSQL fails the run instead of skipping.
"""

from __future__ import annotations

import asyncio
import errno
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


def files_holding(root: Path, needle: bytes, *, skip: tuple[str, ...] = ()) -> list[str]:
    """Every regular file below ``root`` (symlinks not followed, paths with a part in ``skip``
    left out) whose bytes contain ``needle``. Sparse files (a workspace's loop-mounted home
    image) are read stretch by stretch of data: a leak scan need not read a GiB of holes."""
    return [
        str(path)
        for path in root.rglob("*")
        if not any(part in path.parts for part in skip)
        and not path.is_symlink()
        and path.is_file()
        and _holds(path, needle)
    ]


def _holds(path: Path, needle: bytes, chunk: int = 1 << 20) -> bool:
    keep = len(needle) - 1  # bytes carried over, for a needle across two reads
    with path.open("rb") as file:
        fd = file.fileno()
        for start, stop in _data_extents(fd, os.fstat(fd).st_size):
            os.lseek(fd, start, os.SEEK_SET)
            carried = b""
            while start < stop and (block := os.read(fd, min(chunk, stop - start))):
                if needle in carried + block:
                    return True
                carried = block[-keep:] if keep else b""
                start += len(block)
    return False


def _data_extents(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` of each stretch of data in the file, holes left out; the whole file
    where the filesystem cannot tell."""
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno != errno.ENXIO:  # no SEEK_DATA here: read it all
                yield offset, size
            return  # ENXIO: only a hole is left
        stop = os.lseek(fd, start, os.SEEK_HOLE)
        yield start, stop
        offset = stop


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under pytest-xdist's ``--dist loadfile`` modules are handed to the workers in collection
    order. The end-to-end modules (``tests/integration``) are the slowest: they go first, so that
    no long module starts last while the other workers sit idle. The sort is stable, so every
    worker still collects the same order."""
    items.sort(key=lambda item: item.path.parent.name != "integration")


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

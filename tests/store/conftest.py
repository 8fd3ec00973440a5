"""A migrated store on each database (SQLite file, PostgreSQL schema) per test."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from stockade.store import Store


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    migrated = Store(database_url)
    await migrated.migrate()
    try:
        yield migrated
    finally:
        await migrated.close()

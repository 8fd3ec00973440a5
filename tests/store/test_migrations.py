"""Migrations bring an empty database to the models exactly, on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

from stockade.store import Base, Store
from stockade.store._engine import _alembic_config


def _diff(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, Base.metadata))


async def test_models_match_migrations(store: Store) -> None:
    async with store.engine.connect() as conn:
        diff = await conn.run_sync(_diff)
    assert diff == []


async def test_migrate_is_idempotent_and_records_head(store: Store) -> None:
    await store.migrate()
    async with store.engine.connect() as conn:
        version = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar()
        tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
    assert version == ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert {"users", "ssh_keys", "workspaces", "sessions", "audit_events"} <= tables


async def test_diff_detects_a_model_change(store: Store) -> None:
    """The comparison itself can fail: a column the migrations lack shows up in the diff."""
    async with store.engine.begin() as conn:
        await conn.execute(text("ALTER TABLE users DROP COLUMN email"))
        diff = await conn.run_sync(_diff)
    assert any(item[0] == "add_column" and item[3].name == "email" for item in diff)

"""The database: SQLAlchemy 2 (async) models, the :class:`Store` engine, Alembic migrations.

SQLite (default, a file in the data dir, WAL mode) or PostgreSQL (asyncpg). Callers open
``async with store.transaction() as session:`` and get StockadeErrors, never SQLAlchemy's.
"""

from ._engine import Prepared, Store, async_url
from ._models import (
    AuditEventRow,
    Base,
    BlueprintRow,
    GatewayRow,
    SessionRow,
    SshKeyRow,
    UserRow,
    UtcDateTime,
    WorkspaceRow,
)

__all__ = [
    "AuditEventRow",
    "Base",
    "BlueprintRow",
    "GatewayRow",
    "Prepared",
    "SessionRow",
    "SshKeyRow",
    "Store",
    "UserRow",
    "UtcDateTime",
    "WorkspaceRow",
    "async_url",
]

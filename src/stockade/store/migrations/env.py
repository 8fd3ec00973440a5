"""Alembic environment: runs only programmatically, on the connection ``Store.migrate`` passes.

To write a new revision, change ``_models.py`` and add a file to ``versions/`` by hand (or with
``alembic.command.revision(..., autogenerate=True)`` on a connection passed the same way);
``tests/store/test_migrations.py`` fails until models and migrations agree.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from stockade.store._models import Base

connection = context.config.attributes.get("connection")
if not isinstance(connection, Connection):
    raise RuntimeError("stockade migrations run through Store.migrate(), not the alembic CLI")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()

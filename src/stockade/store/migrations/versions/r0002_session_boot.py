"""Sessions know their gateway, its boot, their kind and the key used.

Revision ID: r0002
Revises: r0001
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "r0002"
down_revision: str | None = "r0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(
            sa.Column("gateway_id", sa.String(length=128), nullable=False, server_default="")
        )
        batch.add_column(
            sa.Column("boot_id", sa.String(length=64), nullable=False, server_default="")
        )
        batch.add_column(
            sa.Column("kind", sa.String(length=16), nullable=False, server_default="session")
        )
        batch.add_column(sa.Column("fingerprint", sa.String(length=64), nullable=True))
        batch.create_index("ix_sessions_gateway_id", ["gateway_id"])


def downgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.drop_index("ix_sessions_gateway_id")
        batch.drop_column("fingerprint")
        batch.drop_column("kind")
        batch.drop_column("boot_id")
        batch.drop_column("gateway_id")

"""Gateway heartbeats: one row per gateway boot, so live gateways end a dead one's sessions.

Revision ID: r0006
Revises: r0005
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "r0006"
down_revision: str | None = "r0005"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "gateways",
        sa.Column("boot_id", sa.String(length=64), nullable=False),
        sa.Column("gateway_id", sa.String(length=128), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("end_reason", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("boot_id", name=op.f("pk_gateways")),
    )
    op.create_index("ix_gateways_gateway_id", "gateways", ["gateway_id"], unique=False)
    op.create_index("ix_gateways_seen_at", "gateways", ["seen_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_gateways_seen_at", table_name="gateways")
    op.drop_index("ix_gateways_gateway_id", table_name="gateways")
    op.drop_table("gateways")

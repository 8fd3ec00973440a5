"""Each gateway boot's own heartbeat timeout; the OIDC subject an OIDC user is bound to.

``gateways.stale_after``: the timeout the boot declared in its beats, so a boot is declared
dead by its own contract, never by the (shorter or longer) timeout of whoever notices.
``users.oidc_subject``: ``sub`` of the provider account that created the user, so a provider
account renamed to another user's ``preferred_username`` does not become that user.

Revision ID: r0007
Revises: r0006
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "r0007"
down_revision: str | None = "r0006"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("gateways") as batch:
        batch.add_column(sa.Column("stale_after", sa.Float(), nullable=True))
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("oidc_subject", sa.String(length=255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.drop_column("oidc_subject")
    with op.batch_alter_table("gateways") as batch:
        batch.drop_column("stale_after")

"""Device twins: the cache of each child's twin and the queue of reported patches for the hub.

Revision ID: 0003_twins_twin_cache
Revises: 0002_outbox
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_twins_twin_cache"
down_revision = "0002_outbox"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "twin_cache",
        sa.Column("device_id", sa.String(128), nullable=False),
        sa.Column("document", sa.Text(), nullable=False),
        sa.Column("fetched_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("device_id", name=op.f("pk_twin_cache")),
    )
    op.create_table(
        "twin_reported_queue",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("patch_id", sa.String(32), nullable=False),
        sa.Column("device_id", sa.String(128), nullable=False),
        sa.Column("patch", sa.Text(), nullable=False),
        sa.Column("queued_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_twin_reported_queue")),
        sa.UniqueConstraint("patch_id", name=op.f("uq_twin_reported_queue_patch_id")),
        sqlite_autoincrement=True,
    )


def downgrade() -> None:
    op.drop_table("twin_reported_queue")
    op.drop_table("twin_cache")

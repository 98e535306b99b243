"""The outbox's dead letters: messages the hub refused for good, with its reason.

Revision ID: 0004_outbox_dead_letters
Revises: 0003_twins_twin_cache
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_outbox_dead_letters"
down_revision = "0003_twins_twin_cache"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "outbox_dead_letters",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("message_id", sa.String(64), nullable=False),
        sa.Column("device_id", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("topic", sa.Text(), nullable=False),
        sa.Column("properties", sa.Text(), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("qos", sa.SmallInteger(), nullable=False),
        sa.Column("enqueued_at", sa.Float(), nullable=False),
        sa.Column("dead_at", sa.Float(), nullable=False),
        sa.Column("status", sa.SmallInteger(), nullable=False),
        sa.Column("reason", sa.String(128), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("requeue", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox_dead_letters")),
        sa.UniqueConstraint("message_id", name=op.f("uq_outbox_dead_letters_message_id")),
    )


def downgrade() -> None:
    op.drop_table("outbox_dead_letters")

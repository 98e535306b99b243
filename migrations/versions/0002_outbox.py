"""The outbox: device messages stored durably before their PUBACK.

Revision ID: 0002_outbox
Revises: 0001_cache
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_outbox"
down_revision = "0001_cache"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "outbox",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("message_id", sa.String(32), nullable=False),
        sa.Column("device_id", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("topic", sa.Text(), nullable=False),
        sa.Column("properties", sa.Text(), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("qos", sa.SmallInteger(), nullable=False),
        sa.Column("enqueued_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_outbox")),
        sa.UniqueConstraint("message_id", name=op.f("uq_outbox_message_id")),
        # seq is never reused (the forwarder's cursor relies on it); PostgreSQL's BIGSERIAL never is.
        sqlite_autoincrement=True,
    )
    op.create_index("ix_outbox_expires_at", "outbox", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_outbox_expires_at", table_name="outbox")
    op.drop_table("outbox")

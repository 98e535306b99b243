"""The offline device cache: devices, registered CAs, sync state.

Revision ID: 0001_cache
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_cache"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cache_devices",
        sa.Column("device_id", sa.String(128), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("auth_type", sa.String(32), nullable=False),
        sa.Column("parent", sa.String(128), nullable=True),
        sa.Column("primary_thumbprint", sa.String(64), nullable=True),
        sa.Column("secondary_thumbprint", sa.String(64), nullable=True),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        sa.Column("fetched_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("device_id", name=op.f("pk_cache_devices")),
    )
    op.create_table(
        "cache_cas",
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("pem", sa.Text(), nullable=False),
        sa.Column("thumbprint", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_cache_cas")),
    )
    state = op.create_table(
        "cache_sync_state",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sequence", sa.BigInteger(), nullable=True),
        sa.Column("online", sa.Boolean(), nullable=False),
        sa.Column("online_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("offline_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_success_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_full_sync_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.CheckConstraint("id = 1", name=op.f("ck_cache_sync_state_single_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cache_sync_state")),
    )
    op.bulk_insert(state, [{"id": 1, "online": False}])


def downgrade() -> None:
    op.drop_table("cache_sync_state")
    op.drop_table("cache_cas")
    op.drop_table("cache_devices")

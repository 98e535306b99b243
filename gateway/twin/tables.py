"""The twin tables. Owned by gateway.twin.store; nothing else reads or writes them."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Float, Integer, String, Table, Text

from gateway.db.base import metadata

# The last full twin the gateway saw for each child device, updated by every patch.
twin_cache = Table(
    "twin_cache",
    metadata,
    Column("device_id", String(128), primary_key=True),
    Column("document", Text, nullable=False),  # JSON: {"desired": {...,"$version"}, "reported": {...}}
    Column("fetched_at", Float, nullable=False),  # when the hub last gave us the full twin (epoch, UTC)
    Column("updated_at", Float, nullable=False),  # when any patch last changed it
)

# Reported patches acknowledged to devices and not yet at the hub, in arrival order.
twin_reported_queue = Table(
    "twin_reported_queue",
    metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("patch_id", String(32), nullable=False, unique=True),  # the hub applies each id once
    Column("device_id", String(128), nullable=False),
    Column("patch", Text, nullable=False),  # JSON merge patch
    Column("queued_at", Float, nullable=False),
    sqlite_autoincrement=True,
)

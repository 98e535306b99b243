"""The outbox table. Owned by gateway.outbox.store; nothing else reads or writes it."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Float, Index, Integer, LargeBinary, SmallInteger, String, Table, Text

from gateway.store.base import metadata

outbox = Table(
    "outbox",
    metadata,
    # Global arrival order, never reused; FIFO per device follows from it.
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("message_id", String(32), nullable=False, unique=True),  # gateway-assigned uuid4 hex
    Column("device_id", String(128), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("topic", Text, nullable=False),
    Column("properties", Text, nullable=False),  # JSON object
    Column("payload", LargeBinary, nullable=False),
    Column("qos", SmallInteger, nullable=False),
    Column("enqueued_at", Float, nullable=False),  # seconds since the epoch, UTC
    Column("expires_at", Float, nullable=False),
    # The time-to-live sweep. Nothing selects by device (counts are kept in memory), so device_id has
    # no index: each one would cost every insert.
    Index("ix_outbox_expires_at", "expires_at"),
    # Without AUTOINCREMENT SQLite reuses the highest rowid once the table is empty; the forwarder's
    # cursor ("everything up to seq N is at the hub") needs seq never to go back.
    sqlite_autoincrement=True,
)

"""The outbox's tables. Owned by gateway.outbox; nothing else reads or writes them.

`outbox` is the message table of releases before the segment log (log.py); it is kept so that an
upgraded gateway can carry over what it still holds (store.py imports and empties it at start).
`outbox_dead_letters` holds messages the hub refused for good, with its reason, until an operator
re-queues or drops them (`edgegate outbox`).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    SmallInteger,
    String,
    Table,
    Text,
)

from gateway.db.base import metadata

outbox = Table(
    "outbox",
    metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("message_id", String(32), nullable=False, unique=True),
    Column("device_id", String(128), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("topic", Text, nullable=False),
    Column("properties", Text, nullable=False),  # JSON object
    Column("payload", LargeBinary, nullable=False),
    Column("qos", SmallInteger, nullable=False),
    Column("enqueued_at", Float, nullable=False),  # seconds since the epoch, UTC
    Column("expires_at", Float, nullable=False),
    Index("ix_outbox_expires_at", "expires_at"),
    sqlite_autoincrement=True,
)

outbox_dead_letters = Table(
    "outbox_dead_letters",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("message_id", String(64), nullable=False, unique=True),  # the id the hub saw (kept on re-queue)
    Column("device_id", String(128), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("topic", Text, nullable=False),
    Column("properties", Text, nullable=False),  # JSON object
    Column("payload", LargeBinary, nullable=False),
    Column("qos", SmallInteger, nullable=False),
    Column("enqueued_at", Float, nullable=False),  # seconds since the epoch, UTC
    Column("dead_at", Float, nullable=False),  # when the hub refused it
    Column("status", SmallInteger, nullable=False),  # the hub's HTTP status
    Column("reason", String(128), nullable=False),  # the hub's machine-readable reason
    Column("detail", Text, nullable=False),  # the hub's sentence
    # Set by `edgegate outbox requeue`; the running gateway (or the next start) puts it back in the outbox.
    Column("requeue", Boolean, nullable=False, default=False),
)

"""The outbox table. Owned by gateway.outbox.store; nothing else reads or writes it."""

from __future__ import annotations

from sqlalchemy import BigInteger, Float, Index, Integer, LargeBinary, SmallInteger, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from gateway.store.base import Base


class OutboxRow(Base):
    __tablename__ = "outbox"

    # Global arrival order, never reused; FIFO per device follows from it.
    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                     autoincrement=True)
    message_id: Mapped[str] = mapped_column(String(32), unique=True)  # gateway-assigned uuid4 hex
    device_id: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(32))
    topic: Mapped[str] = mapped_column(Text)
    properties: Mapped[str] = mapped_column(Text)  # JSON object
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    qos: Mapped[int] = mapped_column(SmallInteger)
    enqueued_at: Mapped[float] = mapped_column(Float)  # seconds since the epoch, UTC
    expires_at: Mapped[float] = mapped_column(Float)

    __table_args__ = (
        # The time-to-live sweep. Nothing selects by device (counts are kept in memory), so device_id has
        # no index: each one would cost every insert.
        Index("ix_outbox_expires_at", "expires_at"),
        # Without AUTOINCREMENT SQLite reuses the highest rowid once the table is empty; the forwarder's
        # cursor ("everything up to seq N is at the hub") needs seq never to go back.
        {"sqlite_autoincrement": True},
    )

"""Cloud-to-device messages: a queue per hub, delivered through the gateway whose scope holds the device.

This module owns the table `hub_c2d`. A message follows its device: if the device moves to another
gateway before delivery, the new gateway gets it. `ack` marks delivered everything up to a cursor.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import DateTime, Index, Integer, LargeBinary, String, Text, select, update
from sqlalchemy.orm import Mapped, mapped_column

from hub_mock.db import Base, Database
from hub_mock.errors import NotFound
from hub_mock.registry import Registry


class C2DRow(Base):
    __tablename__ = "hub_c2d"
    __table_args__ = (Index("ix_hub_c2d_device", "device_id", "seq"), {"sqlite_autoincrement": True})

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(String(128))
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    properties: Mapped[str] = mapped_column(Text)  # JSON object of strings
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    delivered_to: Mapped[str | None] = mapped_column(String(128))  # the gateway that acknowledged it


@dataclass(frozen=True, slots=True)
class C2DMessage:
    seq: int
    device_id: str
    payload: bytes
    properties: dict[str, str]


class C2DQueue:
    """Pending cloud-to-device messages, read and acknowledged per gateway scope."""

    def __init__(self, db: Database, registry: Registry) -> None:
        self._sessions = db.sessions
        self._registry = registry

    def send(self, device_id: str, payload: bytes, properties: dict[str, str], now: datetime) -> int:
        """Queue a message for a registered device; its seq."""
        if self._registry.get_device(device_id) is None:
            raise NotFound(f"device {device_id} is not registered")
        row = C2DRow(device_id=device_id, payload=payload, properties=json.dumps(properties), created_at=now)
        with self._sessions.begin() as session:
            session.add(row)
            session.flush()
            return row.seq

    def pending(self, gateway_id: str, *, after: int, limit: int) -> list[C2DMessage]:
        """Undelivered messages after `after` for devices now in the gateway's scope, oldest first."""
        query = (
            select(C2DRow)
            .where(
                C2DRow.seq > after,
                C2DRow.delivered_at.is_(None),
                C2DRow.device_id.in_(self._registry.scope_ids(gateway_id)),
            )
            .order_by(C2DRow.seq)
            .limit(limit)
        )
        with self._sessions() as session:
            return [
                C2DMessage(row.seq, row.device_id, row.payload, json.loads(row.properties))
                for row in session.scalars(query)
            ]

    def ack(self, gateway_id: str, cursor: int, now: datetime) -> int:
        """Mark delivered the gateway's pending messages up to `cursor`; how many were marked."""
        statement = (
            update(C2DRow)
            .where(
                C2DRow.seq <= cursor,
                C2DRow.delivered_at.is_(None),
                C2DRow.device_id.in_(self._registry.scope_ids(gateway_id)),
            )
            .values(delivered_at=now, delivered_to=gateway_id)
        )
        with self._sessions.begin() as session:
            return session.connection().execute(statement).rowcount

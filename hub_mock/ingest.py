"""Telemetry ingest: the gateway's message batches, stored once per message id.

This module owns the table `hub_messages`. `parse_batch` checks a request body without touching the
database; `MessageStore.store` writes a whole batch in one transaction with one executemany.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import DateTime, Index, Integer, LargeBinary, String, Table, Text, func, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Mapped, mapped_column

from hub_mock.db import Base, Database
from hub_mock.errors import Invalid
from hub_mock.registry import check_id

# A batch is one HTTP request; the gateway sends ~500. The cap keeps one request's transaction short.
MAX_BATCH = 5000
# IoT Hub's message id limit.
MAX_MESSAGE_ID = 128
# A payload holding this is refused while the "poison" fault is on (faults.py).
POISON_MARKER = b"POISON"


class MessageRow(Base):
    __tablename__ = "hub_messages"
    __table_args__ = (Index("ix_hub_messages_device", "device_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    message_id: Mapped[str] = mapped_column(String(MAX_MESSAGE_ID), unique=True)
    device_id: Mapped[str] = mapped_column(String(128))
    gateway_id: Mapped[str] = mapped_column(String(128))
    enqueued_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    received_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    properties: Mapped[str] = mapped_column(Text)  # JSON object of strings
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    # What the device sent it as: only "telemetry" comes through this door (twins and methods have theirs).
    kind: Mapped[str] = mapped_column(String(32), default="telemetry")
    system_properties: Mapped[str] = mapped_column(Text, default="{}")  # $.mid, $.cid, $.ct, ... as sent


@dataclass(frozen=True, slots=True)
class Telemetry:
    """One device-to-cloud message as the gateway forwards it."""

    message_id: str
    device_id: str
    enqueued_time: datetime
    properties: dict[str, str]
    payload: bytes
    kind: str = "telemetry"
    system_properties: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StoredMessage:
    id: int
    message_id: str
    device_id: str
    gateway_id: str
    enqueued_time: datetime
    received_time: datetime
    properties: dict[str, str]
    payload: bytes
    kind: str = "telemetry"
    system_properties: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StoreResult:
    accepted: int
    duplicates: int


def parse_time(value: object, field: str) -> datetime:
    """An ISO 8601 timestamp, in UTC; one without a zone is taken as UTC."""
    if not isinstance(value, str):
        raise Invalid(f"{field}: expected an ISO 8601 string")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise Invalid(f"{field}: {value!r} is not an ISO 8601 timestamp") from exc
    # SQLite keeps no zone: store UTC so every reader can put the zone back.
    return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def parse_properties(value: object, field: str) -> dict[str, str]:
    """A JSON object of string values (IoT Hub application properties), or Invalid."""
    if value is None or (type(value) is dict and not value):
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise Invalid(f"{field}: expected an object of string values")
    return dict(value)


def parse_kind(value: object, field: str) -> str:
    """The IoT Hub topic family a message came in on (the gateway's name for it)."""
    if not isinstance(value, str) or not 0 < len(value) <= 32:
        raise Invalid(f"{field}: expected a short string such as 'telemetry'")
    return value


def parse_payload(value: object, field: str) -> bytes:
    if not isinstance(value, str):
        raise Invalid(f"{field}: expected base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error as exc:
        raise Invalid(f"{field}: not valid base64") from exc


def parse_batch(body: object) -> list[Telemetry]:
    """The messages of a `POST /gateways/{gw}/messages` body, checked; Invalid names the bad field.

    A batch repeats a few device ids and arrival times many times: each distinct one is checked once."""
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        raise Invalid('expected {"messages": [...]}')
    items: list[Any] = body["messages"]
    if len(items) > MAX_BATCH:
        raise Invalid(f"a batch holds at most {MAX_BATCH} messages, got {len(items)}; split it")
    devices: dict[object, str] = {}
    times: dict[object, datetime] = {}
    batch = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise Invalid(f"messages[{index}]: expected an object")
        message_id = item.get("message_id")
        if not isinstance(message_id, str) or not 0 < len(message_id) <= MAX_MESSAGE_ID:
            raise Invalid(f"messages[{index}].message_id: expected 1-{MAX_MESSAGE_ID} characters")
        raw_device, raw_time = item.get("device_id"), item.get("enqueued_time")
        device_id = devices.get(raw_device) if isinstance(raw_device, str) else None
        if device_id is None:
            device_id = devices[raw_device] = check_id(f"messages[{index}].device_id", raw_device)
        enqueued = times.get(raw_time) if isinstance(raw_time, str) else None
        if enqueued is None:
            enqueued = times[raw_time] = parse_time(raw_time, f"messages[{index}].enqueued_time")
        batch.append(
            Telemetry(
                message_id=message_id,
                device_id=device_id,
                enqueued_time=enqueued,
                properties=parse_properties(item.get("properties"), f"messages[{index}].properties"),
                payload=parse_payload(item.get("payload_b64"), f"messages[{index}].payload_b64"),
                kind=parse_kind(item.get("kind", "telemetry"), f"messages[{index}].kind"),
                system_properties=parse_properties(item.get("system_properties"),
                                                   f"messages[{index}].system_properties"),
            )
        )
    return batch


_SQLITE_INSERT = (
    "INSERT OR IGNORE INTO hub_messages (message_id, device_id, gateway_id, enqueued_time, received_time,"
    " properties, payload, kind, system_properties) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _sqlite_datetime(value: datetime) -> str:
    """What SQLAlchemy's SQLite DateTime stores: UTC, no zone, microseconds."""
    utc = value.astimezone(UTC) if value.tzinfo else value
    return utc.replace(tzinfo=None).isoformat(" ", "microseconds")


def _json_text(value: dict[str, str]) -> str:
    return json.dumps(value, separators=(",", ":")) if value else "{}"


def _utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything stored here is UTC.
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class MessageStore:
    """Idempotent storage of telemetry by message id, and the admin's view of it."""

    def __init__(self, db: Database) -> None:
        self._sessions = db.sessions
        self._dialect = db.dialect

    def store(self, gateway_id: str, batch: Sequence[Telemetry], received_time: datetime) -> StoreResult:
        """Store each new message id once; a redelivered id (earlier or in this batch) is a duplicate."""
        if self._dialect == "sqlite":
            return self._store_sqlite(gateway_id, batch, received_time)
        fresh: dict[str, Telemetry] = {}
        for message in batch:
            fresh.setdefault(message.message_id, message)
        with self._sessions.begin() as session:
            if fresh:
                known = session.scalars(
                    select(MessageRow.message_id).where(MessageRow.message_id.in_(list(fresh)))
                )
                for message_id in known:
                    del fresh[message_id]
            if fresh:
                rows = [
                    {
                        "message_id": m.message_id,
                        "device_id": m.device_id,
                        "gateway_id": gateway_id,
                        "enqueued_time": m.enqueued_time,
                        "received_time": received_time,
                        "properties": _json_text(m.properties),
                        "payload": m.payload,
                        "kind": m.kind,
                        "system_properties": _json_text(m.system_properties),
                    }
                    for m in fresh.values()
                ]
                session.execute(self._insert_ignoring_duplicates(), rows)
        return StoreResult(accepted=len(fresh), duplicates=len(batch) - len(fresh))

    def _store_sqlite(self, gateway_id: str, batch: Sequence[Telemetry], received_time: datetime) -> StoreResult:
        """The same on SQLite, in one INSERT OR IGNORE executemany at the driver: the unique message id
        drops duplicates and the driver's row count is what was new. Going through the ORM cost the hub
        ~70 us of CPU per forwarded message, on the machine the gateway under benchmark shares."""
        times: dict[datetime, str] = {}

        def text(value: datetime) -> str:
            known = times.get(value)
            if known is None:
                known = times[value] = _sqlite_datetime(value)
            return known

        received = text(received_time)
        rows = [(m.message_id, m.device_id, gateway_id, text(m.enqueued_time), received, _json_text(m.properties),
                 m.payload, m.kind, _json_text(m.system_properties)) for m in batch]
        with self._sessions.begin() as session:
            cursor = session.connection().exec_driver_sql(_SQLITE_INSERT, rows)
            accepted = max(0, cursor.rowcount)
        return StoreResult(accepted=accepted, duplicates=len(batch) - accepted)

    def _insert_ignoring_duplicates(self) -> Any:
        # The ids were filtered above on the one database thread; insert-or-ignore still keeps a
        # second writer on the same database (two hub processes, one PostgreSQL) from failing a batch.
        table = cast(Table, MessageRow.__table__)
        if self._dialect == "sqlite":
            return sqlite.insert(table).on_conflict_do_nothing(index_elements=["message_id"])
        if self._dialect == "postgresql":
            return postgresql.insert(table).on_conflict_do_nothing(index_elements=["message_id"])
        return insert(table)

    def query(self, *, device_id: str | None, after: int, limit: int) -> tuple[list[StoredMessage], int]:
        """Messages with row id > `after` (optionally one device's), oldest first, and the total count."""
        query = select(MessageRow).where(MessageRow.id > after).order_by(MessageRow.id).limit(limit)
        count = select(func.count()).select_from(MessageRow)
        if device_id is not None:
            query = query.where(MessageRow.device_id == device_id)
            count = count.where(MessageRow.device_id == device_id)
        with self._sessions() as session:
            rows = list(session.scalars(query))
            total = int(session.scalar(count) or 0)
        messages = [
            StoredMessage(
                id=row.id,
                message_id=row.message_id,
                device_id=row.device_id,
                gateway_id=row.gateway_id,
                enqueued_time=_utc(row.enqueued_time),
                received_time=_utc(row.received_time),
                properties=json.loads(row.properties),
                payload=row.payload,
                kind=row.kind,
                system_properties=json.loads(row.system_properties or "{}"),
            )
            for row in rows
        ]
        return messages, total


def poisoned_ids(body: bytes) -> list[str]:
    """Ids of the messages in a batch body whose payload holds POISON_MARKER (an unparsable body: none)."""
    try:
        batch = parse_batch(json.loads(body))
    except (ValueError, Invalid):
        return []
    return [m.message_id for m in batch if POISON_MARKER in m.payload]

"""The dead-letter table: messages the hub refused for good (400, 413, 422, or marked permanent).

Blocking SQLAlchemy Core calls; the gateway runs them on a database thread, the `edgegate outbox`
command directly (it works while the gateway runs or is stopped). A re-queue is a flag the CLI sets;
the gateway moves flagged rows back into the outbox (keeping their message id) and deletes them here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, Integer, cast, delete, func, insert, select, update

from gateway.db.engine import storage_errors
from gateway.outbox.tables import outbox_dead_letters

_C = outbox_dead_letters.c


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: int
    message_id: str
    device_id: str
    kind: str
    topic: str
    properties: dict[str, str]
    payload: bytes
    qos: int
    enqueued_at: float
    dead_at: float
    status: int
    reason: str
    detail: str
    requeue: bool


@dataclass(frozen=True, slots=True)
class NewDeadLetter:
    message_id: str
    device_id: str
    kind: str
    topic: str
    properties: dict[str, str]
    payload: bytes
    qos: int
    enqueued_at: float
    dead_at: float
    status: int
    reason: str
    detail: str


def _row(r: Sequence[Any]) -> DeadLetter:
    return DeadLetter(int(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4]), json.loads(str(r[5])),
                      bytes(r[6]), int(r[7]), float(r[8]), float(r[9]), int(r[10]), str(r[11]), str(r[12]),
                      bool(r[13]))


class DeadLetters:
    """The dead-letter table on `engine`."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def add(self, letters: Sequence[NewDeadLetter]) -> None:
        """Store refused messages; one the table already holds (same message id) is kept as it was."""
        if not letters:
            return
        rows = [{"message_id": d.message_id, "device_id": d.device_id, "kind": d.kind, "topic": d.topic,
                 "properties": json.dumps(d.properties, separators=(",", ":")), "payload": d.payload, "qos": d.qos,
                 "enqueued_at": d.enqueued_at, "dead_at": d.dead_at, "status": d.status, "reason": d.reason[:128],
                 "detail": d.detail, "requeue": False} for d in letters]
        statement = _insert_or_ignore(self.engine.dialect.name)
        with storage_errors("storing dead letters", self.engine.url), self.engine.begin() as conn:
            if statement is None:
                conn.execute(insert(outbox_dead_letters), rows)
            else:
                conn.execute(statement, rows)

    def entries(self, *, device_id: str | None = None, limit: int = 100) -> list[DeadLetter]:
        query = select(*_C).order_by(_C.id).limit(limit)
        if device_id is not None:
            query = query.where(_C.device_id == device_id)
        with storage_errors("reading dead letters", self.engine.url), self.engine.connect() as conn:
            return [_row(r) for r in conn.execute(query)]

    def count(self) -> tuple[int, int]:
        """(dead letters, of which flagged for re-queue)."""
        query = select(func.count(), func.coalesce(func.sum(cast(_C.requeue, Integer)), 0))
        with storage_errors("counting dead letters", self.engine.url), self.engine.connect() as conn:
            total, flagged = conn.execute(query.select_from(outbox_dead_letters)).one()
        return int(total), int(flagged)

    def flag_requeue(self, ids: Sequence[int] | None, device_id: str | None = None) -> int:
        """Ask the gateway to put these dead letters (all when `ids` is None) back in the outbox."""
        statement = update(outbox_dead_letters).values(requeue=True)
        statement = statement.where(_C.id.in_(list(ids))) if ids is not None else statement
        if device_id is not None:
            statement = statement.where(_C.device_id == device_id)
        with storage_errors("flagging dead letters", self.engine.url), self.engine.begin() as conn:
            return int(conn.execute(statement).rowcount)

    def drop(self, ids: Sequence[int] | None, device_id: str | None = None) -> int:
        """Delete dead letters for good (all when `ids` is None)."""
        statement = delete(outbox_dead_letters)
        statement = statement.where(_C.id.in_(list(ids))) if ids is not None else statement
        if device_id is not None:
            statement = statement.where(_C.device_id == device_id)
        with storage_errors("dropping dead letters", self.engine.url), self.engine.begin() as conn:
            return int(conn.execute(statement).rowcount)

    def flagged(self, limit: int = 1000) -> list[DeadLetter]:
        """Dead letters waiting to be re-queued, oldest first."""
        query = select(*_C).where(_C.requeue.is_(True)).order_by(_C.id).limit(limit)
        with storage_errors("reading dead letters", self.engine.url), self.engine.connect() as conn:
            return [_row(r) for r in conn.execute(query)]

    def forget(self, ids: Sequence[int]) -> None:
        """Delete re-queued rows once the outbox has committed them again."""
        if ids:
            with storage_errors("removing re-queued dead letters", self.engine.url), self.engine.begin() as conn:
                conn.execute(delete(outbox_dead_letters).where(_C.id.in_(list(ids))))


def _insert_or_ignore(dialect: str) -> Any:
    """INSERT ... ON CONFLICT (message_id) DO NOTHING in the engine's own dialect, or None for another. Each
    dialect's module is imported when used: PostgreSQL's costs a SQLite gateway 4 MiB of resident memory."""
    if dialect == "sqlite":
        from sqlalchemy.dialects import sqlite

        return sqlite.insert(outbox_dead_letters).on_conflict_do_nothing(index_elements=["message_id"])
    if dialect == "postgresql":
        from sqlalchemy.dialects import postgresql

        return postgresql.insert(outbox_dead_letters).on_conflict_do_nothing(index_elements=["message_id"])
    return None

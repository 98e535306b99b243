"""The outbox: accepted device messages, durably stored before their PUBACK and removed only once the
hub has them (or their time-to-live is over).

Writes use group commit: `submit` only queues; one writer task commits everything queued so far in a
single transaction on the database thread and then resolves every waiting future at once. A commit
costs one fsync whatever the batch size, so durability does not cost a transaction per message.
Bounds are checked in memory (O(1)) against counts loaded at start and kept in step with the table.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, Table, delete, event, func, insert, select

from gateway.errors import OutboxFull, StorageError
from gateway.metrics import Counters
from gateway.outbox.bounds import OutboxLimits, refusal
from gateway.outbox.tables import OutboxRow
from gateway.records import InboundMessage
from gateway.store.db import DatabaseThread, storage_errors

log = logging.getLogger("edgegate.outbox")

# Messages per transaction. Past a few hundred the fsync is already amortized; the cap keeps one
# transaction's memory and lock time small on a Pi.
MAX_BATCH = 1024

_TABLE: Table = OutboxRow.__table__  # type: ignore[assignment]  # declarative tables are Tables


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    seq: int
    message_id: str
    device_id: str
    kind: str
    topic: str
    properties: dict[str, str]
    payload: bytes
    qos: int
    enqueued_at: float


def _full_sync(dbapi_connection: Any, _record: Any) -> None:
    # An acknowledged message must survive power loss, not only a crash: the outbox commits with
    # synchronous=FULL (one fsync per group commit), the cache keeps NORMAL.
    if dbapi_connection.__class__.__module__.startswith("sqlite3"):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.close()


class Outbox:
    """Implements the front door's MessageSink; the forwarder reads it with `peek` and `remove`."""

    def __init__(self, engine: Engine, limits: OutboxLimits, *, counters: Counters | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.engine, self.limits, self.clock = engine, limits, clock
        self.counters = counters or Counters()
        if engine.dialect.name == "sqlite":
            event.listen(engine, "connect", _full_sync)
        self._db = DatabaseThread("edgegate-outbox")
        self._pending: list[tuple[dict[str, Any], asyncio.Future[None] | None]] = []
        self._wake = asyncio.Event()
        self.committed = asyncio.Event()  # set after each commit; the forwarder clears it
        self._writer: asyncio.Task[None] | None = None
        self.messages = 0
        self.bytes = 0
        self._per_device: Counter[str] = Counter()

    async def open(self) -> None:
        """Load the counts of what survived the last run, and start the writer."""
        self.messages, self.bytes, self._per_device = await self._db.run(self._load_counts)
        if self.messages:
            log.info("outbox holds %d messages (%d bytes) from before the restart", self.messages, self.bytes)
            self.committed.set()
        self._writer = asyncio.get_running_loop().create_task(self._write_loop())

    async def close(self) -> None:
        """Commit what is queued, then stop."""
        if self._writer is not None:
            while self._pending:
                self._wake.set()
                await asyncio.sleep(0.01)
            self._writer.cancel()
        self._db.close()

    # ---- the front door's side -----------------------------------------------------------------

    def submit(self, message: InboundMessage) -> asyncio.Future[None]:
        """Queue `message`; the future resolves once it is committed. Raises OutboxFull when it does not fit."""
        size = len(message.payload)
        why = refusal(self.limits, self.messages, self.bytes, self._per_device[message.device_id], size)
        if why is not None:
            self.counters.inc("edgegate_outbox_refused_total", bound=why.split(" (")[-1].split(" ")[0])
            raise OutboxFull(why)
        self.messages += 1
        self.bytes += size
        self._per_device[message.device_id] += 1
        row = {
            "message_id": uuid.uuid4().hex,
            "device_id": message.device_id,
            "kind": message.kind,
            "topic": message.topic,
            "properties": json.dumps(dict(message.properties), separators=(",", ":")),
            "payload": message.payload,
            "qos": message.qos,
            "enqueued_at": message.received_at,
            "expires_at": message.received_at + self.limits.time_to_live,
        }
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((row, fut))
        self._wake.set()
        return fut

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                rows = [row for row, _ in batch]
                try:
                    await self._db.run(self._insert, rows)
                except StorageError as exc:
                    log.error("outbox commit of %d messages failed; they get no PUBACK: %s", len(rows), exc)
                    self._forget(rows)
                    for _, fut in batch:
                        if fut is not None and not fut.done():
                            fut.set_exception(exc)
                    continue
                self.counters.inc("edgegate_outbox_committed_total", amount=len(rows))
                for _, fut in batch:
                    if fut is not None and not fut.done():
                        fut.set_result(None)
                self.committed.set()

    def _forget(self, rows: Sequence[dict[str, Any]]) -> None:
        for row in rows:
            self.messages -= 1
            self.bytes -= len(row["payload"])
            self._per_device[row["device_id"]] -= 1

    # ---- the forwarder's side ------------------------------------------------------------------

    async def peek(self, limit: int) -> list[QueuedMessage]:
        """The oldest `limit` unexpired messages, in arrival order."""
        return await self._db.run(self._select, limit, self.clock())

    async def remove(self, messages: Sequence[QueuedMessage]) -> None:
        """Forget messages the hub has stored."""
        if not messages:
            return
        await self._db.run(self._delete, [m.seq for m in messages])
        for m in messages:
            self.messages -= 1
            self.bytes -= len(m.payload)
            self._per_device[m.device_id] -= 1
            if not self._per_device[m.device_id]:
                del self._per_device[m.device_id]

    async def expire(self) -> int:
        """Drop messages past their time-to-live; returns how many (each counted and logged in total)."""
        gone = await self._db.run(self._delete_expired, self.clock())
        total = 0
        for device_id, (count, size) in gone.items():
            total += count
            self.messages -= count
            self.bytes -= size
            self._per_device[device_id] -= count
        if total:
            self.counters.inc("edgegate_outbox_expired_total", amount=total)
            log.warning("outbox: %d messages expired before reaching the hub (time_to_live %.0fs)",
                        total, self.limits.time_to_live)
        return total

    def depth(self) -> dict[str, int]:
        return {"messages": self.messages, "bytes": self.bytes, "devices": len(self._per_device)}

    # ---- SQL, on the database thread ------------------------------------------------------------

    def _load_counts(self) -> tuple[int, int, Counter[str]]:
        with storage_errors("reading the outbox", self.engine.url), self.engine.connect() as conn:
            rows = conn.execute(
                select(OutboxRow.device_id, func.count(), func.coalesce(func.sum(func.length(OutboxRow.payload)), 0))
                .group_by(OutboxRow.device_id)
            ).all()
        per_device = Counter({str(r[0]): int(r[1]) for r in rows})
        return sum(per_device.values()), sum(int(r[2]) for r in rows), per_device

    def _insert(self, rows: list[dict[str, Any]]) -> None:
        with storage_errors("committing to the outbox", self.engine.url), self.engine.begin() as conn:
            conn.execute(insert(_TABLE), rows)

    def _select(self, limit: int, now: float) -> list[QueuedMessage]:
        query = select(_TABLE).where(OutboxRow.expires_at > now).order_by(OutboxRow.seq).limit(limit)
        with storage_errors("reading the outbox", self.engine.url), self.engine.connect() as conn:
            return [
                QueuedMessage(r.seq, r.message_id, r.device_id, r.kind, r.topic, json.loads(r.properties),
                              bytes(r.payload), r.qos, r.enqueued_at)
                for r in conn.execute(query)
            ]

    def _delete(self, seqs: list[int]) -> None:
        with storage_errors("removing delivered messages", self.engine.url), self.engine.begin() as conn:
            conn.execute(delete(_TABLE).where(OutboxRow.seq.in_(seqs)))

    def _delete_expired(self, now: float) -> dict[str, tuple[int, int]]:
        with storage_errors("expiring outbox messages", self.engine.url), self.engine.begin() as conn:
            rows = conn.execute(
                select(OutboxRow.device_id, func.count(), func.coalesce(func.sum(func.length(OutboxRow.payload)), 0))
                .where(OutboxRow.expires_at <= now).group_by(OutboxRow.device_id)
            ).all()
            if rows:
                conn.execute(delete(_TABLE).where(OutboxRow.expires_at <= now))
        return {str(r[0]): (int(r[1]), int(r[2])) for r in rows}

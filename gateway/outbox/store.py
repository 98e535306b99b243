"""The outbox: accepted device messages, durably stored before their PUBACK and removed only once the
hub has them (or their time-to-live is over).

- Durable: `submit` queues, the group committer (committer.py) commits, and only then does the
  returned future resolve; the front door sends PUBACK on that. On SQLite the outbox commits with
  `synchronous=FULL`: in WAL mode NORMAL survives a crash of the process but not a power cut, and an
  acknowledged message must survive both (bench/outbox_bench.py measures what FULL costs).
- Ordered: `seq` is the global arrival order and never reused; per-device FIFO follows from it.
- Bounded, refuse-new: see bounds.py. Counts (messages, payload bytes, per device) live in memory,
  loaded once at `open`, so the check in `submit` is O(1) and never reads the database.
- Time-to-live: messages older than `limits.time_to_live` are never handed out again, and a sweep
  deletes and counts them (`edgegate_outbox_expired_total`).

All SQL runs on one database thread; the event loop never waits on a query or an fsync.
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
from typing import Any, Literal

from sqlalchemy import Engine, Table, delete, event, func, insert, select

from gateway.errors import OutboxFull, StorageError
from gateway.metrics import Counters
from gateway.outbox.bounds import OutboxLimits, refusal
from gateway.outbox.committer import MAX_BATCH, GroupCommitter
from gateway.outbox.tables import outbox
from gateway.records import InboundMessage
from gateway.store.db import DatabaseThread, open_engine, storage_errors

log = logging.getLogger("edgegate.outbox")

# edgeHub sweeps expired messages every 1800 s; a sweep here is one indexed range delete, so it can
# run often and keep the counts (and the bounds) close to what will really be sent.
EXPIRE_EVERY = 60.0
# Rows deleted per expiry transaction: a large expiry never holds the database thread for long.
EXPIRE_CHUNK = 5000

_TABLE: Table = outbox
_C = _TABLE.c


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    """One stored message, as the forwarder reads it."""

    seq: int
    message_id: str
    device_id: str
    kind: str
    topic: str
    properties: dict[str, str]
    payload: bytes
    qos: int
    enqueued_at: float  # seconds since the epoch, UTC


def _sqlite_synchronous(level: str) -> Callable[[Any, Any], None]:
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA synchronous={level}")
        cursor.close()

    return on_connect


class Outbox:
    """The front door's MessageSink; the forwarder reads it with `peek` and `remove`.

    Give it an engine of its own (`open_engine(url)`): on SQLite its connections are switched to
    `synchronous=FULL` (or `sqlite_synchronous`). `await open()` before use, `await close()` after.
    """

    def __init__(
        self,
        engine: Engine,
        limits: OutboxLimits | None = None,
        *,
        counters: Counters | None = None,
        clock: Callable[[], float] = time.time,
        sqlite_synchronous: Literal["FULL", "NORMAL"] = "FULL",
        max_batch: int = MAX_BATCH,
        expire_every: float = EXPIRE_EVERY,
    ) -> None:
        self.engine, self.limits, self.clock = engine, limits or OutboxLimits(), clock
        self.counters = counters or Counters()
        self.expire_every = expire_every
        if engine.dialect.name == "sqlite":
            event.listen(engine, "connect", _sqlite_synchronous(sqlite_synchronous))
        self._db = DatabaseThread("edgegate-outbox")
        # The forwarder's reads and deletes get their own thread and engine. Queued behind the group
        # commits they would add their time to every PUBACK's latency (QoS 1 ingest, quick bench:
        # 3.4k msg/s shared, 4.6k with a thread of their own). Their engine keeps SQLite's NORMAL
        # synchronous: a delete lost to a power cut only means a resend, which the hub deduplicates.
        self._forward_db = DatabaseThread("edgegate-outbox-forward")
        self._forward_engine = open_engine(engine.url.render_as_string(hide_password=False))
        self._committer: GroupCommitter[dict[str, Any]] = GroupCommitter(
            self._insert, self._db, committed=self._on_committed, failed=self._on_failed, max_batch=max_batch
        )
        self._listeners: list[Callable[[], None]] = []
        self._sweeper: asyncio.Task[None] | None = None
        self.messages = 0
        self.bytes = 0
        self._per_device: Counter[str] = Counter()

    async def open(self) -> None:
        """Load the counts of what survived the last run; start the writer and the expiry sweep."""
        self.messages, self.bytes, self._per_device = await self._db.run(self._load_counts)
        if self.messages:
            log.info("outbox holds %d messages (%d bytes) from before the restart", self.messages, self.bytes)
        self._committer.start()
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever(), name="outbox-expiry")

    async def close(self) -> None:
        """Commit what is queued, stop the sweep, release the database thread."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        await self._committer.close()
        self._db.close()
        self._forward_db.close()
        self._forward_engine.dispose()

    def on_commit(self, listener: Callable[[], None]) -> None:
        """Call `listener()` after every commit (the forwarder's wake-up)."""
        self._listeners.append(listener)

    # ---- the front door's side -----------------------------------------------------------------

    def submit(self, message: InboundMessage) -> asyncio.Future[None]:
        """Queue `message`; the future resolves once it is committed (or fails with the commit's error).

        Raises OutboxFull at once, with nothing stored, when a bound would be exceeded.
        """
        size = len(message.payload)
        refused = refusal(self.limits, self.messages, self.bytes, self._per_device[message.device_id], size)
        if refused is not None:
            self.counters.inc("edgegate_outbox_full_total", bound=refused.bound.value)
            raise OutboxFull(refused.message)
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
        committed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if message.qos == 0:
            # Nobody waits for a QoS 0 commit; a failure is logged and counted by the writer already.
            committed.add_done_callback(_consume_outcome)
        self._committer.put(row, committed)
        self.messages += 1
        self.bytes += size
        self._per_device[message.device_id] += 1
        return committed

    def _on_committed(self, rows: list[dict[str, Any]]) -> None:
        self.counters.inc("edgegate_outbox_committed_total", amount=len(rows))
        for listener in self._listeners:
            try:
                listener()
            except Exception:
                log.exception("outbox commit listener %r failed", listener)

    def _on_failed(self, rows: list[dict[str, Any]], exc: Exception) -> None:
        self.counters.inc("edgegate_outbox_commit_failed_total", amount=len(rows))
        log.error("outbox commit of %d messages failed; none of them is acknowledged: %s", len(rows), exc)
        for row in rows:
            self._uncount(row["device_id"], len(row["payload"]))

    def _uncount(self, device_id: str, size: int, count: int = 1) -> None:
        self.messages -= count
        self.bytes -= size
        left = self._per_device[device_id] - count
        if left > 0:
            self._per_device[device_id] = left
        else:
            del self._per_device[device_id]

    # ---- the forwarder's side ------------------------------------------------------------------

    async def peek(self, limit: int, after: int = 0, max_bytes: int | None = None) -> list[QueuedMessage]:
        """The oldest unexpired messages with seq > `after`, in arrival order: at most `limit`, and no more
        payload bytes than `max_bytes` (but always the first one)."""
        rows = await self._forward_db.run(self._select, limit, after, self.clock())
        if max_bytes is None:
            return rows
        size = 0
        for index, row in enumerate(rows):
            size += len(row.payload)
            if size > max_bytes and index:
                return rows[:index]
        return rows

    async def remove(self, messages: Sequence[QueuedMessage]) -> int:
        """Forget messages the hub has stored; returns how many were still here (expiry may have won)."""
        if not messages:
            return 0
        gone = set(await self._forward_db.run(self._delete, [m.seq for m in messages]))
        for m in messages:
            if m.seq in gone:
                self._uncount(m.device_id, len(m.payload))
        return len(gone)

    async def expire(self) -> int:
        """Delete messages past their time-to-live; returns how many (counted, and logged in total)."""
        now, total = self.clock(), 0
        while True:
            gone = await self._db.run(self._delete_expired, now, EXPIRE_CHUNK)
            for device_id, size in gone:
                self._uncount(device_id, size)
            total += len(gone)
            if len(gone) < EXPIRE_CHUNK:
                break
        if total:
            self.counters.inc("edgegate_outbox_expired_total", amount=total)
            log.warning("outbox: %d messages expired before reaching the hub (time_to_live %gs)",
                        total, self.limits.time_to_live)
        return total

    def depth(self) -> dict[str, int]:
        """Messages, payload bytes and devices waiting (committed or being committed)."""
        return {"messages": self.messages, "bytes": self.bytes, "devices": len(self._per_device)}

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.expire_every)
            try:
                await self.expire()
            except StorageError as exc:
                log.error("outbox expiry sweep failed; retrying in %gs: %s", self.expire_every, exc)

    # ---- SQL, on the database thread ------------------------------------------------------------

    def _load_counts(self) -> tuple[int, int, Counter[str]]:
        query = select(_C.device_id, func.count(), func.coalesce(func.sum(func.length(_C.payload)), 0)).group_by(
            _C.device_id
        )
        with storage_errors("reading the outbox", self.engine.url), self.engine.connect() as conn:
            rows = conn.execute(query).all()
        per_device = Counter({str(r[0]): int(r[1]) for r in rows})
        return sum(per_device.values()), sum(int(r[2]) for r in rows), per_device

    def _insert(self, rows: list[dict[str, Any]]) -> None:
        with storage_errors("committing to the outbox", self.engine.url), self.engine.begin() as conn:
            conn.execute(insert(_TABLE), rows)

    def _select(self, limit: int, after: int, now: float) -> list[QueuedMessage]:
        query = (
            select(_C.seq, _C.message_id, _C.device_id, _C.kind, _C.topic, _C.properties, _C.payload, _C.qos,
                   _C.enqueued_at)
            .where(_C.seq > after, _C.expires_at > now)
            .order_by(_C.seq)
            .limit(limit)
        )
        with storage_errors("reading the outbox", self.engine.url), self._forward_engine.connect() as conn:
            return [
                QueuedMessage(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), bytes(r[6]), r[7], r[8])
                for r in conn.execute(query)
            ]

    def _delete(self, seqs: list[int]) -> list[int]:
        with storage_errors("removing delivered messages", self.engine.url), self._forward_engine.begin() as conn:
            return list(conn.execute(delete(_TABLE).where(_C.seq.in_(seqs)).returning(_C.seq)).scalars())

    def _delete_expired(self, now: float, limit: int) -> list[tuple[str, int]]:
        doomed = select(_C.seq).where(_C.expires_at <= now).order_by(_C.expires_at).limit(limit)
        with storage_errors("expiring outbox messages", self.engine.url), self.engine.begin() as conn:
            result = conn.execute(
                delete(_TABLE).where(_C.seq.in_(doomed)).returning(
                    _C.device_id, func.length(_C.payload)
                )
            )
            return [(str(r[0]), int(r[1])) for r in result]


def _consume_outcome(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()

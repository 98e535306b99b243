"""The twin cache and the reported-patch queue, in the gateway's database (tables.py).

- The cache: the last full twin the gateway saw for each child, kept whole in memory (loaded at
  `open`) so a GET while the hub is down never waits on the database, and written through.
- The queue: a reported patch is committed (with the cache row it changes, in one transaction) before
  `queue_reported`'s future resolves, so the device's PUBACK and 204 both mean "this survives a
  kill -9 or a power cut" (SQLite runs with synchronous=FULL here, as the outbox does). Patches leave
  in `seq` order and are deleted only after the hub has them; each carries a `patch_id` the hub
  applies at most once, so a resend after a lost answer changes nothing.

All SQL runs on one database thread, in the order it was issued.
"""

from __future__ import annotations

import json
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, delete, event, insert, select, update

from gateway.db.engine import DatabaseThread, storage_errors
from gateway.twin.documents import EMPTY_TWIN, Twin, parse_twin
from gateway.twin.tables import twin_cache, twin_reported_queue


@dataclass(frozen=True, slots=True)
class CachedTwin:
    twin: Twin
    fetched_at: float  # when the hub last gave us the whole twin (0: never; built from patches only)
    updated_at: float


@dataclass(frozen=True, slots=True)
class QueuedPatch:
    seq: int
    patch_id: str
    device_id: str
    patch: dict[str, Any]
    queued_at: float


def _full_sync(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()


def _seq(patch: QueuedPatch) -> int:
    return patch.seq


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


class TwinStore:
    """Give it an engine of its own (`open_engine(url)`). `await open()` before use, `close()` after."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        if engine.dialect.name == "sqlite":
            event.listen(engine, "connect", _full_sync)
        self._db = DatabaseThread("edgegate-twins")
        self._cache: dict[str, CachedTwin] = {}
        # The queue by seq, oldest first, and the same patches by device. A fleet that reconnects at
        # once queues a patch per device: every operation here is O(1) or O(that device's patches),
        # never a pass over the whole queue (5,000 devices made the list this replaced quadratic).
        self._queue: OrderedDict[int, QueuedPatch] = OrderedDict()
        self._by_device: dict[str, list[QueuedPatch]] = {}
        self._bytes = 0

    async def open(self) -> None:
        self._cache, queue = await self._db.run(self._load)
        for queued in queue:
            self._enqueue(queued)

    def _enqueue(self, queued: QueuedPatch) -> None:
        queue = self._queue
        newest = next(reversed(queue)) if queue else 0
        queue[queued.seq] = queued
        if queued.seq < newest:  # committed out of order (not seen, but cheap to keep right)
            self._queue = OrderedDict(sorted(queue.items()))
        mine = self._by_device.setdefault(queued.device_id, [])
        mine.append(queued)
        if len(mine) > 1 and mine[-2].seq > queued.seq:
            mine.sort(key=_seq)
        self._bytes += len(_dumps(queued.patch))

    def _dequeue(self, seq: int) -> QueuedPatch | None:
        queued = self._queue.pop(seq, None)
        if queued is None:
            return None
        mine = self._by_device[queued.device_id]
        mine.remove(queued)
        if not mine:
            del self._by_device[queued.device_id]
        self._bytes -= len(_dumps(queued.patch))
        return queued

    def close(self) -> None:
        self._db.close()
        self.engine.dispose()

    # ---- reads (memory only) ----------------------------------------------------------------------

    def cached(self, device_id: str) -> CachedTwin | None:
        return self._cache.get(device_id)

    def pending(self, device_id: str | None = None) -> list[QueuedPatch]:
        """Queued reported patches, oldest first: one device's (O(its own)), or all (O(all))."""
        if device_id is None:
            return list(self._queue.values())
        return list(self._by_device.get(device_id, ()))

    def oldest(self) -> QueuedPatch | None:
        """The patch that goes to the hub next (O(1))."""
        return next(iter(self._queue.values()), None)

    def queued(self, device_id: str) -> int:
        """How many reported patches of `device_id` wait for the hub (O(1))."""
        return len(self._by_device.get(device_id, ()))

    @property
    def queued_total(self) -> int:
        """How many reported patches wait for the hub, all devices (O(1))."""
        return len(self._queue)

    @property
    def queued_bytes(self) -> int:
        """The JSON size of every queued patch together (O(1))."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._cache)

    # ---- writes -----------------------------------------------------------------------------------

    async def queue_reported(self, device_id: str, patch: dict[str, Any], now: float) -> tuple[QueuedPatch, int]:
        """Commit `patch` to the queue and to the cached twin; returns once both are durable, with the
        cached twin's reported $version after it."""
        previous = self._cache.get(device_id)
        current = previous or CachedTwin(EMPTY_TWIN, 0.0, now)
        changed = CachedTwin(current.twin.with_reported(patch), current.fetched_at, now)
        # The next patch of this device must build on this one even before this one is committed.
        self._cache[device_id] = changed
        try:
            queued = await self._db.run(self._insert_patch, device_id, patch, changed, now)
        except Exception:
            if self._cache.get(device_id) is changed:
                if previous is None:
                    del self._cache[device_id]
                else:
                    self._cache[device_id] = previous
            raise
        self._enqueue(queued)
        return queued, changed.twin.reported_version

    async def remember(self, device_id: str, twin: Twin, now: float, *, full: bool) -> None:
        """Store the twin the hub gave us (`full`) or one a desired patch changed."""
        current = self._cache.get(device_id)
        fetched_at = now if full else (current.fetched_at if current is not None else 0.0)
        entry = CachedTwin(twin, fetched_at, now)
        self._cache[device_id] = entry
        await self._db.run(self._upsert, device_id, entry)

    def confirmed(self, device_id: str, now: float) -> None:
        """The hub gave us the twin we hold: newer `fetched_at` in memory only (the copy on disk keeps
        the time it was written, which can only make a later "cached copy from ..." sound older)."""
        current = self._cache.get(device_id)
        if current is not None:
            self._cache[device_id] = CachedTwin(current.twin, now, current.updated_at)

    async def delivered(self, patch: QueuedPatch, hub_version: int | None) -> None:
        """The hub has `patch`: drop it from the queue; record the hub's reported $version."""
        await self._db.run(self._delete_patch, patch.seq)
        self._dequeue(patch.seq)
        current = self._cache.get(patch.device_id)
        if current is not None and hub_version is not None and patch.device_id not in self._by_device:
            twin = current.twin
            settled = Twin(twin.desired, twin.reported, twin.desired_version, hub_version)
            self._cache[patch.device_id] = CachedTwin(settled, current.fetched_at, current.updated_at)
            await self._db.run(self._upsert, patch.device_id, self._cache[patch.device_id])

    # ---- the database thread ----------------------------------------------------------------------

    def _load(self) -> tuple[dict[str, CachedTwin], list[QueuedPatch]]:
        with storage_errors("loading the twin cache", self.engine.url), self.engine.connect() as conn:
            cache = {
                row.device_id: CachedTwin(parse_twin(json.loads(row.document)), row.fetched_at, row.updated_at)
                for row in conn.execute(select(twin_cache))
            }
            queue = [
                QueuedPatch(row.seq, row.patch_id, row.device_id, json.loads(row.patch), row.queued_at)
                for row in conn.execute(select(twin_reported_queue).order_by(twin_reported_queue.c.seq))
            ]
        return cache, queue

    def _insert_patch(self, device_id: str, patch: dict[str, Any], changed: CachedTwin, now: float) -> QueuedPatch:
        patch_id = uuid.uuid4().hex
        with storage_errors("queueing a reported patch", self.engine.url), self.engine.begin() as conn:
            key = conn.execute(
                insert(twin_reported_queue).values(patch_id=patch_id, device_id=device_id, patch=_dumps(patch),
                                                   queued_at=now)
            ).inserted_primary_key
            assert key is not None
            seq = key[0]
            self._write_cache(conn, device_id, changed)
        return QueuedPatch(int(seq), patch_id, device_id, patch, now)

    def _upsert(self, device_id: str, entry: CachedTwin) -> None:
        with storage_errors("writing the twin cache", self.engine.url), self.engine.begin() as conn:
            self._write_cache(conn, device_id, entry)

    @staticmethod
    def _write_cache(conn: Any, device_id: str, entry: CachedTwin) -> None:
        values = {"document": _dumps(entry.twin.to_device_json()), "fetched_at": entry.fetched_at,
                  "updated_at": entry.updated_at}
        done = conn.execute(update(twin_cache).where(twin_cache.c.device_id == device_id).values(**values))
        if not done.rowcount:
            conn.execute(insert(twin_cache).values(device_id=device_id, **values))

    def _delete_patch(self, seq: int) -> None:
        with storage_errors("removing a delivered reported patch", self.engine.url), self.engine.begin() as conn:
            conn.execute(delete(twin_reported_queue).where(twin_reported_queue.c.seq == seq))


"""Group commit: one writer task turns a stream of queued rows into few transactions.

`put` never blocks and never touches the database. The writer takes everything queued so far (at most
`max_batch` rows) and commits it in one transaction on the database thread, then resolves every
waiting future at once. A commit costs one fsync whatever its size, and while one commit is on the
disk the next batch gathers by itself, so batches grow with the load without a timer (a timer would
only add latency when the gateway is quiet).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from gateway.errors import StorageError
from gateway.store.db import DatabaseThread

log = logging.getLogger("edgegate.outbox")

T = TypeVar("T")

# Rows per transaction. Past a few hundred the fsync is already amortized; the cap keeps one
# transaction's memory and lock time small on a Pi.
MAX_BATCH = 512


class GroupCommitter(Generic[T]):
    """Commits queued rows in batches with `commit(rows)` on `db`; `start()` inside the event loop."""

    def __init__(
        self,
        commit: Callable[[list[T]], None],
        db: DatabaseThread,
        *,
        committed: Callable[[list[T]], None],
        failed: Callable[[list[T], Exception], None],
        max_batch: int = MAX_BATCH,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self._commit, self._db = commit, db
        self._committed, self._failed = committed, failed
        self.max_batch = max_batch
        self._queue: deque[tuple[T, asyncio.Future[None] | None]] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.commits = 0  # transactions that succeeded
        self.largest_batch = 0

    def __len__(self) -> int:
        """Rows queued and not yet handed to a transaction."""
        return len(self._queue)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="outbox-group-commit")

    def put(self, row: T, waiter: asyncio.Future[None] | None) -> None:
        """Queue `row`; `waiter` (if any) gets the commit's outcome."""
        if self._closing or self._task is None:
            raise StorageError("the outbox is not open: it was never opened or is closing")
        self._queue.append((row, waiter))
        self._wake.set()

    async def close(self) -> None:
        """Commit everything queued, then stop the writer."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        queue = self._queue
        while True:
            if not queue:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = [queue.popleft() for _ in range(min(len(queue), self.max_batch))]
            rows = [row for row, _ in batch]
            try:
                await self._db.run(self._commit, rows)
            except Exception as exc:  # the writer must outlive any failure, or every later waiter hangs
                if not isinstance(exc, StorageError):
                    log.exception("outbox commit of %d rows raised an unexpected error", len(rows))
                self._failed(rows, exc)
                for _, waiter in batch:
                    if waiter is not None and not waiter.done():
                        waiter.set_exception(exc)
                continue
            self.commits += 1
            self.largest_batch = max(self.largest_batch, len(rows))
            for _, waiter in batch:
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)
            self._committed(rows)

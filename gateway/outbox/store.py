"""The outbox: accepted device messages, durably stored before their PUBACK and removed only once the
hub has them, the hub refused them for good (dead letters), or their time-to-live is over.

- Durable: `submit` queues; the writer task commits every `commit_interval` (group commit: a fleet's
  trickle shares one append and one fdatasync), and only then does the returned future resolve; the
  front door sends PUBACK on that. `durability="fsync"` (default) survives a power cut;
  `"process"` skips the fdatasync: it survives a crash of the gateway, not of the machine.
- Fair: commits take round-robin from each device's queue (committer.py).
- Ordered: `seq` is the commit order; per-device FIFO follows from it.
- Bounded, refuse-new: bounds.py (counts, memory) and space.py (free disk space). Counts live in
  memory, so `submit` never touches the disk.
- Never wedged: a failed commit fails its futures (no PUBACK) and the writer backs off; removals that
  could not be written stay queued and are retried; space comes back by deleting whole segments,
  which needs no free space.
- Time-to-live counts time spent queued (queueclock.py), not wall-clock differences.

Storage is the segment log (log.py) in `<state_dir>/outbox`; dead letters live in the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, delete, inspect, select

from gateway.db.engine import DatabaseThread, storage_errors
from gateway.errors import OutboxFull, StorageError
from gateway.hub.backoff import next_backoff
from gateway.metrics import Counters
from gateway.outbox.bounds import (
    MAX_PENDING_BYTES,
    MAX_PENDING_QOS0_BYTES_PER_DEVICE,
    Bound,
    OutboxLimits,
    memory_refusal,
    refusal,
)
from gateway.outbox.committer import MAX_BATCH, MAX_BATCH_BYTES, FairQueue, LingerPolicy
from gateway.outbox.dead_letters import DeadLetters, NewDeadLetter
from gateway.outbox.log import Durability, NewMessage, Segment, SegmentLog, WritePlan
from gateway.outbox.queueclock import CLOCK_EVERY, is_expired, resumed
from gateway.outbox.segment import Removal
from gateway.outbox.space import DiskSpace, disk_space, effective_reserve, segment_size, space_refusal
from gateway.outbox.tables import outbox as legacy_table
from gateway.records import InboundMessage, Submission
from gateway.service.supervisor import Supervisor, TaskState

log = logging.getLogger("edgegate.outbox")

# The group commit's linger: a message waits at most this long for others to share its commit.
# 1,000 devices x 1 msg/s then share ~33 commits a second instead of ~285 (docs/BENCHMARKS.md).
COMMIT_INTERVAL = 0.03
# Payload bytes one device may have waiting for a commit before `room_for` asks the front door to stop
# reading its socket: about one commit_interval of a fast publisher's traffic, a small share of RSS.
PAUSE_PENDING_BYTES = 256 * 1024
# A device with this many messages waiting for one commit is publishing faster than one message per
# commit_interval: it is held back by its own in-flight window (paho and mosquitto_pub keep 20), so
# the commit goes now. A fleet's trickle (one message per device per commit) still lingers.
EAGER_PENDING = 8
# What a commit stores is kept in memory for the forwarder's next peek, so that a forwarder keeping up with
# the stream never reads back from disk what it was handed a moment before (bench.forward_micro: the
# reader thread's pread and decode were about a third of the forwarder's CPU per message). Counted as
# payload plus FRESH_OVERHEAD a message (the QueuedMessage and its dict entry); past FRESH_BYTES (a
# forwarder behind: the hub away) commits are not kept and the forwarder reads them from disk as before.
FRESH_BYTES = 2 * 1024 * 1024
FRESH_OVERHEAD = 256
# Removals alone (no new message to ride along with) are written after at most this long, unsynced:
# a removal lost to a power cut only means a resend, which the hub deduplicates.
REMOVAL_EVERY = 1.0
EXPIRE_EVERY = 60.0
# How often the dead-letter table is read for re-queue requests (`edgegate outbox requeue`) and counts.
DEAD_LETTER_EVERY = 5.0
# How stale the free-space figure may get before `submit` reads statvfs again.
SPACE_EVERY = 0.25
# A failed write waits before the next attempt: from this, doubling, up to the cap.
RETRY_BASE = 0.1
RETRY_CAP = 5.0
# The configured reserve for disk space when none is given (space.effective_reserve caps it).
DISK_RESERVE = 64 * 1024 * 1024
LEGACY_CHUNK = 2000
# The outbox's two tasks, as status and /healthz name them.
WRITER_TASK = "outbox-writer"
SWEEP_TASK = "outbox-expiry"


# Not frozen: one is built per message read (see gateway.records.InboundMessage).
@dataclass(slots=True)
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
    enqueued_at: float  # seconds since the epoch, UTC (the device's time of arrival, for the hub)


@dataclass(slots=True)
class _Pending:
    """Messages of one device submitted together, and the one future they share."""

    messages: list[NewMessage]
    waiter: asyncio.Future[None] | None


class Outbox:
    """The front door's MessageSink; the forwarder reads it with `peek` and `remove`.

    `await open()` before use, `await close()` after.
    """

    def __init__(
        self,
        directory: Path,
        limits: OutboxLimits | None = None,
        *,
        counters: Counters | None = None,
        durability: Durability = "fsync",
        commit_interval: float = COMMIT_INTERVAL,
        disk_reserve: int = DISK_RESERVE,
        dead_letters: DeadLetters | None = None,
        legacy: Engine | None = None,
        wallclock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        space: Callable[[Path], DiskSpace] = disk_space,
        max_batch: int = MAX_BATCH,
        expire_every: float = EXPIRE_EVERY,
        supervisor: Supervisor | None = None,
    ) -> None:
        self.directory, self.limits = directory, limits or OutboxLimits()
        self.counters = counters or Counters()
        # The writer and the sweep run supervised: anything that escapes them is logged once, counted,
        # shown in status and retried, instead of every later submit waiting for a commit forever.
        self.supervisor = supervisor or Supervisor(self.counters)
        self.durability, self.commit_interval, self.disk_reserve = durability, commit_interval, disk_reserve
        self.dead_letters, self.legacy = dead_letters, legacy
        self.wallclock, self.monotonic, self._space_of = wallclock, monotonic, space
        self.max_batch, self.expire_every = max_batch, expire_every
        self.log = SegmentLog(directory, durability=durability)
        self._writer = DatabaseThread("edgegate-outbox-writer")
        self._reader = DatabaseThread("edgegate-outbox-reader")
        self._queue: FairQueue[_Pending] = FairQueue()
        self._removals: dict[Removal, list[int]] = {}
        self._listeners: list[Callable[[], None]] = []
        self._wake = asyncio.Event()
        self._closed = asyncio.Event()
        self._eager = asyncio.Event()
        self._last_devices: frozenset[str] = frozenset()  # who was in the last commit (worth_lingering)
        self._linger_policy = LingerPolicy()
        self._room_waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop  # set by open()
        self._sweeper: asyncio.Task[None] | None = None
        self._inflight: list[_Pending] = []  # the batch of the commit under way
        self._fresh: dict[int, QueuedMessage] = {}  # by seq, in seq order: committed, not yet peeked
        self._peeked = False  # nothing is kept for a reader that never came (a gateway with no [hub])
        self._fresh_bytes = 0
        self._waiting_since = 0.0  # loop time at which the oldest message waiting for a commit arrived
        self._closing = False
        self._clock = resumed(0.0, monotonic())
        self._space = DiskSpace(0, 0)
        self._space_at = -1e9
        self._space_read_at = -1e9  # when statvfs was last read (the writer estimates in between)
        self._refused_size = 0
        self._disk_failed: str | None = None  # the last write failure, until a write succeeds
        self._failures = 0
        self._last_commit = 0.0
        self._last_commit_mono = 0.0
        self.messages = 0
        self.bytes = 0
        self._per_device: Counter[str] = Counter()
        self._refused: tuple[Bound, str] = (Bound.MAX_MESSAGES, "")  # why _admit stopped, when it did
        self._props_cache: dict[tuple[tuple[str, str], ...], bytes] = {}
        self.commits = 0
        self.largest_batch = 0
        self.dead_letter_count = 0
        self.requeue_waiting = 0

    # ---- life cycle --------------------------------------------------------------------------

    async def open(self) -> None:
        """Recover the segment log, carry over an older release's table, start the writer and the sweep."""
        self.directory.mkdir(parents=True, exist_ok=True)
        await self._writer.run(self.log.recover)
        for problem in self.log.problems:
            log.error("OUTBOX DAMAGE in %s: %s", self.directory, problem)
        self._space = await self._writer.run(self._space_of, self.directory)
        self._space_at = self.monotonic()
        self.log.segment_bytes = segment_size(self._space.total)
        self._clock = resumed(self.log.queue_clock, self.monotonic())
        self._last_commit_mono = self.monotonic()
        for segment in self.log.segments:
            for index in range(len(segment.live)):
                if segment.live[index]:
                    self._count(self.log.device_names[segment.devices[index]], segment.sizes[index], 1)
        if self.legacy is not None:
            await self._import_legacy(self.legacy)
        if self.messages:
            log.info("outbox holds %d messages (%d bytes) from before the restart", self.messages, self.bytes)
        # Python 3.11's get_running_loop() makes a getpid() system call each time; submit_many runs once
        # per device read, so it keeps the loop it was opened on.
        self._loop = asyncio.get_running_loop()
        self._task = self.supervisor.owned(WRITER_TASK, self._write_forever, lambda: self._closing)
        self._sweeper = self.supervisor.owned(SWEEP_TASK, self._sweep_forever, lambda: self._closing)
        if self.dead_letters is not None:
            try:
                await self.refresh_dead_letters()  # re-queue requests made while the gateway was stopped
            except StorageError as exc:
                log.error("cannot read the dead-letter table; retrying in %gs: %s", DEAD_LETTER_EVERY, exc)

    async def close(self) -> None:
        """Commit what is queued (removals too), stop the sweep, release the threads and files."""
        self._closing = True
        self._wake_room_waiters()
        self._closed.set()
        self._eager.set()
        self._wake.set()
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        if self._task is not None:
            if self.supervisor.health[WRITER_TASK].state is TaskState.FAILING:
                # Backing off after a failure: no commit will come; the devices keep what was not PUBACKed.
                self._task.cancel()
                self._fail_everything(StorageError("the outbox closed while its writer was failing"))
            await asyncio.gather(self._task, return_exceptions=True)
        self._writer.close()
        self._reader.close()
        self.log.close()

    def on_commit(self, listener: Callable[[], None]) -> None:
        """Call `listener()` after every commit that stored messages (the forwarder's wake-up)."""
        self._listeners.append(listener)

    # ---- the front door's side ----------------------------------------------------------------

    def submit(self, message: InboundMessage, *, message_id: str | None = None) -> asyncio.Future[None]:
        """Queue `message`; the future resolves once it is committed (or fails with the commit's error).

        Raises OutboxFull at once, with nothing stored, when a bound, the memory budget or the free disk
        space would be exceeded, or while the disk keeps failing.
        """
        taken = self.submit_many((message,), message_id=message_id)
        if taken.committed is None:
            raise OutboxFull(taken.refusal or "refused")
        return taken.committed

    def submit_many(self, messages: Sequence[InboundMessage], *, message_id: str | None = None) -> Submission:
        """Queue one device's messages, in order, under one future (the front door submits what one read
        of the socket carried). Each message is checked against the bounds, the memory budget and the
        free disk space as if submitted alone, in order: the first one refused ends the batch, and the
        Submission says how many were taken and why the rest were not (each refused one is counted).
        `message_id` (a re-queued dead letter keeps its id) is for a single message only.
        """
        if self._closing or self._task is None:
            raise StorageError("the outbox is not open: it was never opened or is closing")
        if not messages:
            return Submission(None, 0)
        device_id = messages[0].device_id
        now = self.monotonic()
        if now - self._space_at > SPACE_EVERY:
            self._refresh_space(now)
        accepted, total = self._admit(device_id, messages)
        refused_why = None
        if accepted < len(messages):
            bound, refused_why = self._refused
            self.counters.inc("edgegate_outbox_full_total", amount=len(messages) - accepted, bound=bound.value)
            if not accepted:
                return Submission(None, 0, refused_why)
        news = []
        props_cache = self._props_cache
        for m in messages[:accepted] if accepted < len(messages) else messages:
            props = m.properties
            encoded = props_cache.get(props) if props else b""
            if encoded is None:
                if len(props_cache) > 1024:
                    props_cache.clear()
                encoded = props_cache[props] = _properties(props)
            news.append(NewMessage(m.device_id, m.kind, m.topic, m.qos, m.received_at, encoded, m.payload,
                                   message_id))
        committed: asyncio.Future[None] = self._loop.create_future()
        if not _any_qos(messages, accepted):
            # Nobody waits for a QoS 0 commit; a failure is logged and counted by the writer already.
            committed.add_done_callback(_consume_outcome)
        if not self._queue:
            self._waiting_since = self._loop.time()
        self._queue.put(device_id, _Pending(news, committed), total, accepted)
        self._count(device_id, total, accepted)
        self._wake.set()
        if (self._queue.pending_count(device_id) >= EAGER_PENDING
                or len(self._queue) >= self.max_batch or self._queue.bytes >= MAX_BATCH_BYTES):
            self._eager.set()
        return Submission(committed, accepted, refused_why)

    def _admit(self, device_id: str, messages: Sequence[InboundMessage]) -> tuple[int, int]:
        """(how many of `messages` fit, in order, their payload bytes); on a refusal `_refused` says why."""
        total = 0
        for m in messages:  # a loop, not sum() over a generator: once per device read
            total += len(m.payload)
        count = len(messages)
        limits, queued = self.limits, self._queue.bytes
        device_pending = self._queue.pending_bytes(device_id)
        reserve = self._reserve_for(self._space)
        if (self._disk_failed is None
                and self.messages + count <= limits.max_messages and self.bytes + total <= limits.max_bytes
                and self._per_device[device_id] + count <= limits.per_device_max_messages
                and queued + total <= MAX_PENDING_BYTES
                and device_pending + total <= MAX_PENDING_QOS0_BYTES_PER_DEVICE
                and space_refusal(self._space, reserve, queued, total + 64 * count) is None):
            return count, total  # the whole batch fits even as its worst case: no per-message check
        taken = size_taken = 0
        for m in messages:
            size = len(m.payload)
            refused = (refusal(limits, self.messages + taken, self.bytes + size_taken,
                               self._per_device[device_id] + taken, size)
                       or memory_refusal(queued + size_taken, device_pending + size_taken, m.qos, size))
            if refused is not None:
                self._refused = (refused.bound, refused.message)
                break
            if self._disk_failed is not None:
                self._refused = (Bound.DISK_FAILED, f"the outbox cannot write to disk: {self._disk_failed}")
                break
            no_room = space_refusal(self._space, reserve, queued + size_taken, size + 64)
            if no_room is not None:
                self._refused_size = size + 64
                self._refused = (Bound.DISK_SPACE, no_room)
                break
            taken += 1
            size_taken += size
        return taken, size_taken

    def room_for(self, device_id: str) -> asyncio.Future[None] | None:
        """None while `device_id` has less than PAUSE_PENDING_BYTES waiting for a commit; else a future that
        resolves once it is under half of that. The front door stops reading the device's socket until
        then, so a flooding device (QoS 0 included) is slowed to the disk's pace by TCP, not by drops."""
        if self._queue.pending_bytes(device_id) < PAUSE_PENDING_BYTES:
            return None
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._room_waiters.setdefault(device_id, []).append(waiter)
        return waiter

    def _wake_room_waiters(self) -> None:
        for device_id in list(self._room_waiters):
            if self._queue.pending_bytes(device_id) < PAUSE_PENDING_BYTES // 2 or self._closing:
                for waiter in self._room_waiters.pop(device_id):
                    if not waiter.done():
                        waiter.set_result(None)

    def pending_bytes(self, device_id: str | None = None) -> int:
        """Payload bytes waiting in memory for a commit: one device's, or everyone's (None).
        The front door's per-connection budget reads this."""
        return self._queue.bytes if device_id is None else self._queue.pending_bytes(device_id)

    def _refuse(self, bound: Bound, text: str) -> None:
        self.counters.inc("edgegate_outbox_full_total", bound=bound.value)
        raise OutboxFull(text)

    def _reserve_for(self, space: DiskSpace) -> int:
        return effective_reserve(self.disk_reserve, space.total)

    def _refresh_space(self, now: float) -> None:
        try:
            self._space = self._space_of(self.directory)
            self._space_read_at = now
        except OSError as exc:
            log.error("cannot read the free space of %s: %s", self.directory, exc)
        self._space_at = now

    def _count(self, device_id: str, size: int, count: int) -> None:
        self.messages += count
        self.bytes += size
        left = self._per_device[device_id] + count
        if left > 0:
            self._per_device[device_id] = left
        else:
            del self._per_device[device_id]

    # ---- the writer ---------------------------------------------------------------------------

    async def _write_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                if self._closing and not self._removals:
                    return
                if not self._removals and not self._clock_due() and self._disk_failed is None:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                # Removals alone wait (unsynced) for messages to ride along with, at most REMOVAL_EVERY.
                # A failing disk is probed with a clock-only write (after the back-off below): new
                # messages are refused until one succeeds, so nothing else would ever try it.
                left = REMOVAL_EVERY - (loop.time() - self._last_commit)
                if left > 0 and not self._closing and self._disk_failed is None:
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), left)
                    if self._queue:
                        continue
            elif (self.commit_interval > 0 and not self._closing
                  and self._linger_policy.decide(self._queue.devices(), self._last_devices)):
                await self._linger()
            if self._failures and not self._closing:
                await self._sleep(next_backoff(self._failures - 1, 0.5, base=RETRY_BASE, cap=RETRY_CAP))
            try:
                await self._commit_once()
            except BaseException:
                # Escaping to the supervisor (a bug, or cancelled while failing): the commit's devices get
                # an error instead of waiting for ever; they keep what was not PUBACKed and send it again.
                error = StorageError("the outbox writer failed during this commit")
                for pending in self._inflight:
                    if pending.waiter is not None and not pending.waiter.done():
                        pending.waiter.set_exception(error)
                raise
            finally:
                self._inflight = []
            if self._closing and self._failures:
                self._fail_everything(StorageError("the outbox closed while its disk was failing"))
                return

    async def _linger(self) -> None:
        """Wait commit_interval for others to share the commit -- unless a device is already waiting on
        its own in-flight window (EAGER_PENDING) or the batch is full: then lingering only slows it."""
        if self._eager.is_set():
            self._eager.clear()
            return
        # The linger counts from when the oldest waiting message arrived, not from when the writer got to
        # it: one that came in while the last commit was being written has waited that long already.
        left = self.commit_interval - (asyncio.get_running_loop().time() - self._waiting_since)
        if left > 0:
            waiting = len(self._queue)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._eager.wait(), left)
            self._linger_policy.lingered(len(self._queue) - waiting)
        self._eager.clear()

    async def _sleep(self, seconds: float) -> None:
        """Linger or back off; `close` cuts it short."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closed.wait(), seconds)

    def _clock_due(self) -> bool:
        return bool(self.messages) and self.monotonic() - self._last_commit_mono > CLOCK_EVERY

    async def _reap(self) -> None:
        """Delete the head segments with nothing live left (needs no free space: how a full disk recovers)."""
        reap = self.log.reapable()
        if reap:
            await self._reader.run(self.log.reap, reap)

    async def _commit_once(self) -> None:
        batch = self._inflight = self._queue.take(self.max_batch)
        self._waiting_since = asyncio.get_running_loop().time()  # what is left (past max_batch) waits anew
        self._wake_room_waiters()  # taken into a commit: no longer waiting in memory for one
        removals, self._removals = self._removals, {}
        messages = [m for p in batch for m in p.messages]
        try:
            plan = self.log.prepare(messages, removals, self._clock.now(self.monotonic()), self.wallclock())
            self._space = await self._writer.run(self._write, plan)
        except OSError as exc:
            self._on_failed(batch, removals, exc)
            return
        except Exception as exc:  # the writer must outlive anything, or every later submit waits forever
            log.exception("outbox commit of %d messages failed unexpectedly", len(batch))
            self._on_failed(batch, removals, OSError(errno.EIO, f"{exc.__class__.__name__}: {exc}"))
            return
        self._space_at = self.monotonic()
        self._last_commit = asyncio.get_running_loop().time()
        self._last_commit_mono = self.monotonic()
        if self._failures or self._disk_failed:
            log.warning("the outbox writes again after %d failed attempts", self._failures)
        self._failures, self._disk_failed = 0, None
        self.log.apply(plan)
        self._keep_fresh(plan.segment, plan.seqs, messages)
        await self._reap()
        if not batch:
            return
        self.commits += 1
        stored = len(plan.offsets)
        self.largest_batch = max(self.largest_batch, stored)
        self._last_devices = frozenset([p.messages[0].device_id for p in batch])
        for pending in batch:
            if pending.waiter is not None and not pending.waiter.done():
                pending.waiter.set_result(None)
        self.counters.inc("edgegate_outbox_committed_total", amount=stored)
        for listener in self._listeners:
            try:
                listener()
            except Exception:
                log.exception("outbox commit listener %r failed", listener)

    def _write(self, plan: WritePlan) -> DiskSpace:
        """On the writer thread: append (and sync) the plan, then read the free space left (at most
        every SPACE_EVERY: a statvfs per commit was a visible share of a small commit's CPU)."""
        self.log.write(plan)
        now = self.monotonic()
        if now - self._space_read_at <= SPACE_EVERY:
            return DiskSpace(self._space.total, max(0, self._space.free - len(plan.blob)))
        try:
            space = self._space_of(self.directory)
        except OSError:
            return self._space
        self._space_read_at = now
        return space

    def _on_failed(self, batch: list[_Pending], removals: dict[Removal, list[int]], exc: OSError) -> None:
        self._failures += 1
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        text = "the disk is full" if full else f"{exc.__class__.__name__}: {exc}"
        if self._failures == 1:
            log.error("outbox write failed (%s); %d messages get no PUBACK, removals are retried with back-off",
                      text, len(batch))
        # Only a failure with nothing to retry but messages means the disk cannot take messages right now.
        self._disk_failed = None if full else text
        if full:
            self._space = DiskSpace(self._space.total, 0)
            self._space_at = self.monotonic()
        for why, seqs in removals.items():
            self._removals.setdefault(why, []).extend(seqs)
        error = StorageError(f"committing to the outbox in {self.directory} failed: {text}")
        error.__cause__ = exc
        self._fail(batch, error)

    def _fail(self, batch: Sequence[_Pending], error: StorageError) -> None:
        if not batch:
            return
        self.counters.inc("edgegate_outbox_commit_failed_total", amount=sum(len(p.messages) for p in batch))
        for pending in batch:
            self._count(pending.messages[0].device_id, -sum(len(m.payload) for m in pending.messages),
                        -len(pending.messages))
            if pending.waiter is not None and not pending.waiter.done():
                pending.waiter.set_exception(error)

    def _fail_everything(self, error: StorageError) -> None:
        self._fail(self._queue.drain(), error)

    # ---- the forwarder's side ------------------------------------------------------------------

    async def peek(self, limit: int, after: int = 0, max_bytes: int | None = None) -> list[QueuedMessage]:
        """The oldest unexpired messages with seq > `after`, in commit order: at most `limit`, and no more
        payload bytes than `max_bytes` (but always the first one)."""
        self._peeked = True
        wanted = self.log.live(after, limit, max_bytes)
        if not wanted:
            return []
        ttl, now = self.limits.time_to_live, self._clock.now(self.monotonic())
        if is_expired(wanted[0][0].queued[wanted[0][1]], now, ttl):
            # Expired ones are the oldest (the queue clock only moves forward): sweep them now rather
            # than hand out an empty batch while younger messages wait behind them.
            await self.expire()
            wanted = self.log.live(after, limit, max_bytes)
        wanted = [(s, i) for s, i in wanted if not is_expired(s.queued[i], now, ttl)]
        if not wanted:
            return []
        found = self._take_fresh([s.first_seq + i for s, i in wanted])
        if len(found) == len(wanted):
            return list(found.values())  # all kept since their commit: no await, nothing was removed meanwhile
        missing = [(s, i) for s, i in wanted if s.first_seq + i not in found]
        with storage_errors("reading the outbox", str(self.directory)):
            records = await self._reader.run(self.log.read, missing)
        for segment, index, r in records:
            seq = segment.first_seq + index
            found[seq] = QueuedMessage(seq, r.message_id or segment.message_id(seq), segment.texts[r.device],
                                       segment.texts[r.kind], segment.texts[r.topic],
                                       json.loads(r.properties) if r.properties else {},
                                       r.payload, r.qos, r.enqueued_at)
        # In commit order; one removed while the read ran is left out.
        return [found[s.first_seq + i] for s, i in wanted if s.live[i] and s.first_seq + i in found]

    def _keep_fresh(self, segment: Segment, seqs: list[int], messages: list[NewMessage]) -> None:
        """Keep what a commit stored for the forwarder's next peek, while there is room (FRESH_BYTES), once
        there is a forwarder (it has peeked)."""
        if not self._peeked or self._fresh_bytes >= FRESH_BYTES:
            return
        fresh = self._fresh
        size = 0
        for seq, m in zip(seqs, messages, strict=True):
            fresh[seq] = QueuedMessage(seq, m.message_id or segment.message_id(seq), m.device_id, m.kind, m.topic,
                                       json.loads(m.properties) if m.properties else {}, m.payload, m.qos,
                                       m.enqueued_at)
            size += len(m.payload) + FRESH_OVERHEAD
        self._fresh_bytes += size

    def _take_fresh(self, seqs: list[int]) -> dict[int, QueuedMessage]:
        """Those of `seqs` (ascending) kept since their commit, taken out (a POST that fails reads them from
        disk next time). Anything kept from before the first of them is gone (delivered, removed or expired)
        or was passed over (a peek `after`): forgotten too, so nothing is kept for ever."""
        fresh = self._fresh
        found: dict[int, QueuedMessage] = {}
        if not fresh:
            return found
        first = seqs[0]
        for seq in list(itertools.takewhile(first.__gt__, fresh)):
            self._fresh_bytes -= len(fresh.pop(seq).payload) + FRESH_OVERHEAD
        for seq in seqs:
            message = fresh.pop(seq, None)
            if message is not None:
                self._fresh_bytes -= len(message.payload) + FRESH_OVERHEAD
                found[seq] = message
        return found

    async def remove(self, messages: Sequence[QueuedMessage], why: Removal = Removal.DELIVERED) -> int:
        """Forget messages (the hub has them, or they are dead letters); returns how many were still here.
        Memory changes at once (nothing is sent twice); the REMOVED record follows with the next commit."""
        seqs = [m.seq for m in messages]
        gone = self.log.clear(seqs)
        for device_id, size in gone:
            self._count(device_id, -size, -1)
        if gone:
            self._removals.setdefault(why, []).extend(seqs)
            self._wake.set()
            await self._reap()
        return len(gone)

    async def expire(self) -> int:
        """Remove messages queued longer than the time-to-live; returns how many (counted and logged)."""
        ttl = self.limits.time_to_live
        if ttl is None:
            return 0
        now = self._clock.now(self.monotonic())
        doomed = []
        for segment, index in self.log.oldest_live():
            if not is_expired(segment.queued[index], now, ttl):
                break
            doomed.append(segment.first_seq + index)
        gone = self.log.clear(doomed)
        for device_id, size in gone:
            self._count(device_id, -size, -1)
        if gone:
            self._removals.setdefault(Removal.EXPIRED, []).extend(doomed)
            self._wake.set()
            await self._reap()
            self.counters.inc("edgegate_outbox_expired_total", amount=len(gone))
            log.warning("outbox: %d messages expired before reaching the hub (time_to_live %gs of queued time)",
                        len(gone), ttl)
        return len(gone)

    async def dead_letter(self, messages: Sequence[QueuedMessage], status: int, reason: str, detail: str) -> int:
        """Move messages the hub refused for good to the dead-letter table, then out of the outbox."""
        if self.dead_letters is None:
            raise StorageError("this outbox has no dead-letter table")
        now = self.wallclock()
        letters = [NewDeadLetter(m.message_id, m.device_id, m.kind, m.topic, m.properties, m.payload, m.qos,
                                 m.enqueued_at, now, status, reason, detail) for m in messages]
        await self._reader.run(self.dead_letters.add, letters)
        gone = await self.remove(messages, Removal.DEAD_LETTER)
        self.dead_letter_count += len(letters)
        self.counters.inc("edgegate_outbox_dead_letters_total", amount=len(letters))
        for m in messages:
            log.error("dead letter: the hub refused message %s of device=%s for good (%d %s): %s; "
                      "see `edgegate outbox list`", m.message_id, m.device_id, status, reason, detail)
        return gone

    async def refresh_dead_letters(self) -> int:
        """Re-read the dead-letter counts, and put flagged ones (`edgegate outbox requeue`) back in the
        outbox with their message ids; returns how many were re-queued."""
        if self.dead_letters is None:
            return 0
        flagged = await self._reader.run(self.dead_letters.flagged)
        requeued: list[int] = []
        waiters = []
        for letter in flagged:
            message = InboundMessage(letter.device_id, letter.kind, letter.topic, letter.payload, letter.qos,
                                     tuple(letter.properties.items()), letter.enqueued_at)
            try:
                waiters.append(self.submit(message, message_id=letter.message_id))
            except OutboxFull as exc:
                log.warning("re-queueing dead letters paused: %s", exc)
                break
            requeued.append(letter.id)
        if waiters:
            results = await asyncio.gather(*waiters, return_exceptions=True)
            requeued = [i for i, r in zip(requeued, results, strict=True) if not isinstance(r, BaseException)]
            await self._reader.run(self.dead_letters.forget, requeued)
            log.warning("re-queued %d dead letters for another try at the hub", len(requeued))
        self.dead_letter_count, self.requeue_waiting = await self._reader.run(self.dead_letters.count)
        return len(requeued)

    def depth(self) -> dict[str, int]:
        """Messages, payload bytes and devices waiting (committed or being committed)."""
        return {"messages": self.messages, "bytes": self.bytes, "devices": len(self._per_device)}

    def status(self) -> dict[str, Any]:
        """For status.json: depth, disk, durability, dead letters, time-to-live."""
        now = self.monotonic()
        if now - self._space_at > SPACE_EVERY:
            self._refresh_space(now)
        return {
            **self.depth(),
            "pending_bytes": self._queue.bytes,
            "disk_bytes": self.log.disk_bytes(),
            "segments": len(self.log.segments),
            "free_bytes": self._space.free,
            "reserve_bytes": self._reserve_for(self._space),
            "refusing": self._refusing(),
            "durability": self.durability,
            "commit_interval": self.commit_interval,
            "time_to_live": self.limits.time_to_live,
            "dead_letters": self.dead_letter_count,
            "requeue_waiting": self.requeue_waiting,
            "commits": self.commits,
            "lingers": self._linger_policy.lingers,
            "lingers_fruitless": self._linger_policy.lingers_fruitless,
            "fdatasyncs": self.log.fdatasyncs,
        }

    def _refusing(self) -> str | None:
        if self._disk_failed is not None:
            return f"disk failing: {self._disk_failed}"
        # Refusing while the message last refused for space would still be refused.
        return space_refusal(self._space, self._reserve_for(self._space), self._queue.bytes, self._refused_size)

    async def _sweep_forever(self) -> None:
        loop = asyncio.get_running_loop()
        next_expiry = loop.time() + self.expire_every
        while True:
            await asyncio.sleep(min(DEAD_LETTER_EVERY, self.expire_every))
            try:
                await self.refresh_dead_letters()
            except StorageError as exc:
                log.error("cannot read the dead-letter table; retrying in %gs: %s", DEAD_LETTER_EVERY, exc)
            if loop.time() >= next_expiry:
                next_expiry = loop.time() + self.expire_every
                await self.expire()
            if self._clock_due():
                self._wake.set()

    # ---- an older release's table ---------------------------------------------------------------

    async def _import_legacy(self, engine: Engine) -> None:
        moved = 0
        while True:
            rows = await self._reader.run(_legacy_rows, engine, LEGACY_CHUNK)
            if not rows:
                break
            messages = [NewMessage(r["device_id"], r["kind"], r["topic"], int(r["qos"]), float(r["enqueued_at"]),
                                   str(r["properties"]).encode(), bytes(r["payload"]), str(r["message_id"]))
                        for r in rows]
            plan = self.log.prepare(messages, {}, self._clock.now(self.monotonic()), self.wallclock())
            try:
                await self._writer.run(self.log.write, plan)
            except OSError as exc:
                raise StorageError(f"carrying the old outbox table over to {self.directory} failed: {exc}") from exc
            self.log.apply(plan)
            for m in messages:
                self._count(m.device_id, len(m.payload), 1)
            await self._reader.run(_legacy_forget, engine, [int(r["seq"]) for r in rows])
            moved += len(rows)
        if moved:
            log.warning("carried %d messages over from the outbox table of an older release to %s",
                        moved, self.directory)


def _legacy_rows(engine: Engine, limit: int) -> list[dict[str, Any]]:
    with storage_errors("reading the old outbox table", engine.url), engine.connect() as conn:
        if not inspect(conn).has_table("outbox"):
            return []
        query = select(legacy_table).order_by(legacy_table.c.seq).limit(limit)
        return [dict(r._mapping) for r in conn.execute(query)]


def _legacy_forget(engine: Engine, seqs: list[int]) -> None:
    with storage_errors("emptying the old outbox table", engine.url), engine.begin() as conn:
        conn.execute(delete(legacy_table).where(legacy_table.c.seq.in_(seqs)))


def _properties(properties: tuple[tuple[str, str], ...]) -> bytes:
    """The property bag as compact JSON; none at all (the usual telemetry) costs no bytes."""
    return json.dumps(dict(properties), separators=(",", ":")).encode() if properties else b""


def _any_qos(messages: Sequence[InboundMessage], count: int) -> bool:
    """Does any of the first `count` messages want a PUBACK? (A loop, not any() over a generator: this runs
    once per device read, and a generator costs a frame of its own.)"""
    for i in range(count):  # noqa: SIM110 (see above)
        if messages[i].qos:
            return True
    return False


def _consume_outcome(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()

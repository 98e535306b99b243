"""Drains the outbox to the hub in arrival order, at least once; the hub stores each message id once.

A batch leaves the outbox only after the hub's 2xx. While the hub is unreachable (HubUnavailable) or
refuses us (HubRejected: 401/403, logged as an error because an operator must act) the forwarder
backs off with jitter and keeps everything; when the hub returns it drains the backlog in order.

One POST is in flight at a time, so the hub sees every device's messages in order. The database work
around it is pipelined: the next batch is read while the current one is on the wire, and a delivered
batch is deleted while the next one is on the wire. `cursor` is the highest seq the hub has confirmed,
so the read-ahead never re-reads what is being deleted; any failure sends the cursor back to 0 and the
next read starts from the oldest message still stored (a resend is a duplicate the hub ignores).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import random
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

from gateway.auth.topics import split_properties
from gateway.errors import HubError, HubRejected, StorageError
from gateway.metrics import Counters
from gateway.outbox.store import Outbox, QueuedMessage
from gateway.sync.backoff import next_backoff

log = logging.getLogger("edgegate.upstream")

# Messages per POST: big enough that a backlog drains at thousands per second, small enough that one
# request stays well under a second on a slow uplink (the hub takes at most 5000).
BATCH = 500
# ... and at most this many payload bytes per POST (one bigger message goes alone): 500 messages at IoT
# Hub's 256 KiB limit would pass the hub's 64 MiB body cap, and on a 1 Mbit/s uplink 1 MiB (1.4 MiB in
# base64) still fits the client's 10 s request timeout.
BATCH_BYTES = 1024 * 1024
# edgeHub retries store-and-forward from 1 s up to 60 s; we start sooner and cap lower, so a hub that
# comes back is noticed within half a minute.
BACKOFF_BASE = 0.5
BACKOFF_CAP = 30.0
# With nothing to send the forwarder sleeps until the outbox commits; this is only a safety net.
IDLE_RECHECK = 60.0
# After a POST that was not full, the next read waits this long, so that under a steady stream each POST
# carries a few hundred messages instead of the few dozen committed during one round trip to the hub.
# Every POST also costs a read and a delete transaction, which compete with the group commit for
# SQLite's write lock and with the front door for the event loop. A message that reaches an idle
# forwarder is sent at once; only the ones behind it wait (at most this long).
LINGER = 0.05


def leaves_room(batch: Sequence[QueuedMessage], max_count: int, max_bytes: int) -> bool:
    """Did this POST leave room for more (under the count, and under half the bytes)? Then the next
    read lingers to let a steady stream fill it."""
    return len(batch) < max_count and sum(len(m.payload) for m in batch) < max_bytes // 2


class ForwarderState(StrEnum):
    STARTING = "starting"  # nothing sent yet
    CONNECTED = "connected"  # the last POST succeeded
    RETRYING = "retrying"  # the hub is unreachable or failing: backing off, keeping everything
    REJECTED = "rejected"  # the hub refused our identity (401/403): backing off, keeping everything


class MessageUplink(Protocol):
    async def post_messages(self, messages: list[dict[str, Any]]) -> None: ...

    async def close(self) -> None: ...


def utcnow() -> datetime:
    return datetime.now(UTC)


def wire_message(message: QueuedMessage) -> dict[str, Any]:
    """The hub API's JSON for one message (POST /gateways/{gw}/messages)."""
    enqueued = datetime.fromtimestamp(message.enqueued_at, UTC).isoformat(timespec="microseconds")
    system, application = split_properties(message.properties.items())
    return {
        "message_id": message.message_id,
        "device_id": message.device_id,
        "enqueued_time": enqueued.replace("+00:00", "Z"),
        "properties": application,
        "payload_b64": base64.b64encode(message.payload).decode(),
        "kind": message.kind,
        "system_properties": system,
    }


class Forwarder:
    """Forwards `outbox` through `uplink` (the shared HubClient) until cancelled: `await run()`."""

    def __init__(
        self,
        outbox: Outbox,
        uplink: MessageUplink,
        *,
        counters: Counters | None = None,
        batch: int = BATCH,
        batch_bytes: int = BATCH_BYTES,
        backoff_base: float = BACKOFF_BASE,
        backoff_cap: float = BACKOFF_CAP,
        jitter: Callable[[], float] = random.random,
        wallclock: Callable[[], datetime] = utcnow,
        linger: float = LINGER,
    ) -> None:
        self.outbox, self.uplink, self.batch, self.batch_bytes = outbox, uplink, batch, batch_bytes
        self.linger = linger
        self.counters = counters or Counters()
        self.backoff_base, self.backoff_cap, self.jitter = backoff_base, backoff_cap, jitter
        self.wallclock = wallclock
        self.state = ForwarderState.STARTING
        self.last_error: str | None = None
        self.last_error_at: datetime | None = None
        self.last_success: datetime | None = None
        self.forwarded = 0
        self._attempt = 0
        self._wake = asyncio.Event()
        self._removing: asyncio.Task[int] | None = None
        outbox.on_commit(self.notify)

    def notify(self) -> None:
        """New messages are committed: stop idling (it does not cut a back-off short)."""
        self._wake.set()

    def status(self) -> dict[str, Any]:
        """For `edgegate status`: state, queue depth, totals, last success and last error."""
        return {
            "state": self.state.value,
            "queue": self.outbox.depth(),
            "forwarded": self.forwarded,
            "last_success": self.last_success.isoformat() if self.last_success else None,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at.isoformat() if self.last_error_at else None,
        }

    async def run(self) -> None:
        """Forward until cancelled; never raises for hub or storage failures (it backs off and retries)."""
        cursor = 0  # everything up to this seq is at the hub (maybe not yet deleted here)
        ahead: asyncio.Task[list[QueuedMessage]] | None = None
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    if ahead is not None:
                        batch, ahead = await ahead, None
                        if not batch:
                            continue  # read again below, from a cleared wake-up, before idling
                    else:
                        if not await self._settle_removal():
                            cursor = 0
                        self._wake.clear()  # before the read: a commit after it wakes the idle wait
                        batch = await self._read(after=cursor)
                        if not batch and cursor:
                            # Idle only when nothing at all is stored: a database whose seq restarted
                            # (a SQLite table made without AUTOINCREMENT) must not strand messages.
                            cursor = 0
                            batch = await self._read(after=cursor)
                        if not batch:
                            await self._idle()
                            continue
                    short = leaves_room(batch, self.batch, self.batch_bytes)
                    ahead = loop.create_task(self._read(after=batch[-1].seq, linger=short))
                    try:
                        await self.uplink.post_messages([wire_message(m) for m in batch])
                    except HubError as exc:
                        await _drop(ahead)
                        ahead = None
                        cursor = 0
                        await self._back_off(exc)
                        continue
                    cursor = batch[-1].seq
                    self._delivered(batch)
                    if not await self._settle_removal():
                        await _drop(ahead)
                        ahead = None
                        cursor = 0
                    self._removing = loop.create_task(self.outbox.remove(batch))
                except Exception as exc:  # the forwarder must outlive any failure, or the outbox only grows
                    if isinstance(exc, StorageError):
                        log.error("forwarder cannot read the outbox; retrying: %s", exc)
                    else:
                        log.exception("forwarder failed unexpectedly; retrying")
                    await _drop(ahead)
                    ahead = None
                    cursor = 0
                    await asyncio.sleep(self._next_wait())
        finally:
            await _drop(ahead)
            await self._settle_removal()

    async def _read(self, after: int, linger: bool = False) -> list[QueuedMessage]:
        if linger and self.linger > 0:
            await asyncio.sleep(self.linger)
        return await self.outbox.peek(self.batch, after=after, max_bytes=self.batch_bytes)

    def _next_wait(self) -> float:
        wait = next_backoff(self._attempt, self.jitter(), base=self.backoff_base, cap=self.backoff_cap)
        self._attempt += 1
        return wait

    async def _idle(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), IDLE_RECHECK)

    async def _settle_removal(self) -> bool:
        """Wait for the previous delete; False if it failed (its messages are still stored)."""
        removing, self._removing = self._removing, None
        if removing is None:
            return True
        try:
            # Shielded: cancelling the forwarder must not cancel a delete the database thread runs anyway,
            # or the outbox's counts would miss it.
            await asyncio.shield(removing)
        except StorageError as exc:
            log.error("delivered messages could not be deleted from the outbox; they will be sent again "
                      "(the hub drops duplicates): %s", exc)
            return False
        return True

    def _delivered(self, batch: Sequence[QueuedMessage]) -> None:
        if self.state is not ForwarderState.CONNECTED and self.state is not ForwarderState.STARTING:
            log.warning("hub accepts messages again; draining %d queued", self.outbox.messages)
        self.state = ForwarderState.CONNECTED
        self.forwarded += len(batch)
        self.counters.inc("edgegate_forwarded_total", amount=len(batch))
        self.last_success = self.wallclock()
        self._attempt = 0

    async def _back_off(self, exc: HubError) -> None:
        rejected = isinstance(exc, HubRejected)
        state = ForwarderState.REJECTED if rejected else ForwarderState.RETRYING
        text = str(exc)
        if state is not self.state or text != self.last_error:
            if rejected:
                log.error("THE HUB REFUSES THIS GATEWAY; %d messages kept until an operator fixes it: %s",
                          self.outbox.messages, text)
            else:
                log.warning("cannot forward; keeping %d messages and retrying: %s", self.outbox.messages, text)
        self.state, self.last_error, self.last_error_at = state, text, self.wallclock()
        self.counters.inc("edgegate_forward_failures_total", reason=state.value)
        await asyncio.sleep(self._next_wait())


async def _drop(task: asyncio.Task[Any] | None) -> None:
    """Let a read-ahead finish (it runs on the database thread either way) and forget its result."""
    if task is not None:
        with contextlib.suppress(Exception):
            await task

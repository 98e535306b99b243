"""Drains the outbox to the hub in commit order, at least once; the hub stores each message id once.

Messages leave the outbox only after the hub's 2xx. While the hub is unreachable (HubUnavailable) or
refuses us (HubRejected: 401/403, logged as an error because an operator must act) the forwarder
backs off with jitter and keeps everything; when the hub returns it drains the backlog in order.

A batch the hub refuses for good (HubRefusedContent: 400, 413, 422, or marked permanent) is split in
halves, each sent on its own, down to the single messages at fault; everything else is delivered, in
order per device (the left half always goes before the right). A message at fault is sent alone once
more and, refused again, moves to the dead-letter table with the hub's reason -- but only if the hub
took some other message meanwhile: a hub that refuses everything is broken, not fed poison, and the
forwarder backs off instead. (If the hub changes its mind between the narrowing and that last try, the
message is delivered after later messages of its device.) 5xx, timeouts and TLS failures are never
permanent: they back off and retry.

One POST is in flight at a time, so the hub sees every device's messages in order. Removing delivered
messages only changes memory (the outbox writes the record later), so a disk that cannot take the
removal never makes the forwarder send the same batch again.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
import logging
import math
import random
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

from gateway.auth.topics import split_properties
from gateway.errors import HubError, HubRefusedContent, HubRejected, StorageError
from gateway.hub.backoff import next_backoff
from gateway.metrics import Counters
from gateway.outbox.store import Outbox, QueuedMessage

log = logging.getLogger("edgegate.upstream")

# Messages per POST (the hub takes at most 5000). A POST takes several turns of the event loop (the read,
# the encoding in slices, the request, the answer, the removal), and when devices keep the gateway's CPU
# busy each turn waits behind thousands of device reads: the count per POST, not the uplink, then sets
# how fast the outbox drains. At 500, 5,000 devices x 1 msg/s in one CPU filled the outbox at 3,100
# readings/s while it drained at 500-870/s (bench.fleet_bench 5000 --cpus 1). The byte cap below keeps a
# POST of big messages small.
BATCH = 5000
# ... and at most this many payload bytes per POST (one bigger message goes alone): the hub's 64 MiB body
# cap is never near, and on a 1 Mbit/s uplink 1 MiB (1.4 MiB in base64) still fits the client's 10 s
# request timeout.
BATCH_BYTES = 1024 * 1024
# edgeHub retries store-and-forward from 1 s up to 60 s; we start sooner and cap lower, so a hub that
# comes back is noticed within half a minute.
BACKOFF_BASE = 0.5
BACKOFF_CAP = 30.0
# With nothing to send the forwarder sleeps until the outbox commits; this is only a safety net.
IDLE_RECHECK = 60.0
# After a POST that was not full, the next read waits this long, so that under a steady stream each POST
# carries a few hundred messages instead of the few dozen committed during one round trip to the hub.
# Each POST costs us event-loop time and the hub a transaction: at 1,000 devices x 1 msg/s, 50 ms gave
# 62 messages per POST and cost the gateway ~40 µs and the hub mock 113 µs of CPU per message; 250 ms
# gives ~280 per POST and halves the hub's (python -m bench.hotpath --fleet 1000). A message that
# reaches an idle forwarder is sent at once; only the ones behind it wait (at most this long), which
# telemetry on its way to IoT Hub does not notice.
LINGER = 0.25
# A POST body is encoded this many payload bytes at a time, with the event loop let in between: one
# json.dumps of a full batch of 2 KiB messages (1.4 MB of JSON) held the loop for ~15 ms, and every
# device's PUBACK waited behind it (bench.flood: the fleet's PUBACK p99 at 100-160 ms under a flood).
ENCODE_SLICE_BYTES = 64 * 1024


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
    async def post_messages(self, body: bytes) -> None: ...

    async def close(self) -> None: ...


def utcnow() -> datetime:
    return datetime.now(UTC)


def wire_message(message: QueuedMessage) -> dict[str, Any]:
    """The hub API's JSON for one message (POST /gateways/{gw}/messages)."""
    system, application = split_properties(message.properties.items()) if message.properties else ({}, {})
    return {
        "message_id": message.message_id,
        "device_id": message.device_id,
        "enqueued_time": _iso_time(message.enqueued_at),
        "properties": application,
        "payload_b64": base64.b64encode(message.payload).decode(),
        "kind": message.kind,
        "system_properties": system,
    }


def wire_text(message: QueuedMessage) -> str:
    """`wire_message(message)` as JSON text, put together from its parts: the same object for the hub
    (tests/unit/test_outbox_forwarder.py checks it), at a fraction of the CPU of building a dict for
    json.dumps. Telemetry mostly has no properties, and a batch repeats its arrival times."""
    if message.properties:
        system, application = split_properties(message.properties.items())
        props = json.dumps(application) if application else "{}"
        system_props = json.dumps(system) if system else "{}"
    else:
        props = system_props = "{}"
    return (f'{{"message_id": {json.dumps(message.message_id)}, "device_id": {_json_name(message.device_id)}, '
            f'"enqueued_time": "{_iso_time(message.enqueued_at)}", "properties": {props}, '
            f'"payload_b64": "{base64.b64encode(message.payload).decode()}", "kind": {_json_name(message.kind)}, '
            f'"system_properties": {system_props}}}')


async def encode_batch(batch: Sequence[QueuedMessage]) -> bytes:
    """The hub API's POST body for `batch` ({"messages": [wire_message, ...]}), encoded a slice of
    ENCODE_SLICE_BYTES at a time with the event loop let in between."""
    parts: list[str] = []
    size = 0
    last = len(batch) - 1
    for i, message in enumerate(batch):
        parts.append(wire_text(message))
        size += len(message.payload)
        if size >= ENCODE_SLICE_BYTES and i != last:
            size = 0
            await asyncio.sleep(0)
    return ('{"messages": [' + ", ".join(parts) + "]}").encode()


@functools.lru_cache(maxsize=4096)
def _json_name(text: str) -> str:
    """A device id or kind as JSON: a batch repeats a few of them many times."""
    return json.dumps(text)


def _iso_time(epoch: float) -> str:
    """ISO 8601 UTC with microseconds, as datetime.fromtimestamp(epoch, UTC).isoformat() would give it
    (tests/unit/test_outbox_forwarder.py): the date and time of the whole second come from a cache, so a
    batch that arrived within a few seconds costs one division and one format per message."""
    fraction, whole = math.modf(epoch)
    micros = round(fraction * 1e6)
    if micros >= 1_000_000:
        whole, micros = whole + 1, micros - 1_000_000
    elif micros < 0:
        whole, micros = whole - 1, micros + 1_000_000
    return f"{_iso_second(int(whole))}.{micros:06d}Z"


@functools.lru_cache(maxsize=256)
def _iso_second(whole: int) -> str:
    return datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S")


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
        self.dead_lettered = 0
        self._attempt = 0
        self._wake = asyncio.Event()
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
            "dead_lettered": self.dead_lettered,
            "last_success": self.last_success.isoformat() if self.last_success else None,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at.isoformat() if self.last_error_at else None,
        }

    async def run(self) -> None:
        """Forward until cancelled; never raises for hub or storage failures (it backs off and retries)."""
        short = False
        while True:
            try:
                if short and self.linger > 0:
                    # Under a steady stream, let a POST gather a few hundred messages instead of a few dozen.
                    await asyncio.sleep(self.linger)
                self._wake.clear()  # before the read: a commit after it wakes the idle wait
                batch = await self.outbox.peek(self.batch, max_bytes=self.batch_bytes)
                if not batch:
                    short = False
                    await self._idle()
                    continue
                short = leaves_room(batch, self.batch, self.batch_bytes)
                try:
                    await self._deliver(batch)
                except HubError as exc:
                    short = False
                    await self._back_off(exc)
            except Exception as exc:  # the forwarder must outlive any failure, or the outbox only grows
                if isinstance(exc, StorageError):
                    log.error("forwarder cannot read the outbox; retrying: %s", exc)
                else:
                    log.exception("forwarder failed unexpectedly; retrying")
                short = False
                await asyncio.sleep(self._next_wait())

    async def _deliver(self, batch: list[QueuedMessage]) -> None:
        """POST `batch`; a permanent refusal is narrowed down by halves to the messages at fault, which
        become dead letters -- but only once the hub accepted some other message of the batch: a hub
        that refuses everything is misconfigured, not fed poison, and nothing is dead-lettered for it."""
        refused: list[tuple[QueuedMessage, HubRefusedContent]] = []
        delivered = await self._narrow(batch, refused)
        if refused and not delivered and self.outbox.messages > len(refused):
            # Nothing of this batch was taken (a lone oversized message, say): try the ones after it.
            after = await self.outbox.peek(self.batch, after=batch[-1].seq, max_bytes=self.batch_bytes)
            delivered = await self._narrow(after, refused)
        if not refused:
            return
        if not delivered:
            exc = refused[0][1]
            raise HubRefusedContent(exc.status, exc.reason, exc.detail,
                                    f"the hub refused every message it was sent for good ({exc}); nothing is "
                                    "dead-lettered while it accepts none: check the hub")
        for message, _first in refused:
            # Once more, alone: a hub that changed its mind during the narrowing (a fault cleared, a
            # deployment finished) must not turn good messages into dead letters.
            try:
                await self.uplink.post_messages(await encode_batch([message]))
            except HubRefusedContent as exc:
                await self.outbox.dead_letter([message], exc.status, exc.reason, exc.detail)
                self.dead_lettered += 1
                self.counters.inc("edgegate_forward_dead_letters_total")
                continue
            await self.outbox.remove([message])
            self._delivered([message])

    async def _narrow(self, batch: list[QueuedMessage], refused: list[tuple[QueuedMessage, HubRefusedContent]]) -> int:
        """Deliver what the hub takes of `batch`, in order; collect the single messages it refuses for good."""
        if not batch:
            return 0
        try:
            await self.uplink.post_messages(await encode_batch(batch))
        except HubRefusedContent as exc:
            if len(batch) == 1:
                refused.append((batch[0], exc))
                return 0
            log.warning("the hub refused a batch of %d for good (%d %s): narrowing it down", len(batch),
                        exc.status, exc.reason)
            middle = len(batch) // 2
            return await self._narrow(batch[:middle], refused) + await self._narrow(batch[middle:], refused)
        await self.outbox.remove(batch)
        self._delivered(batch)
        self.counters.inc("edgegate_forward_posts_total")
        return len(batch)

    async def _idle(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), IDLE_RECHECK)

    def _next_wait(self) -> float:
        wait = next_backoff(self._attempt, self.jitter(), base=self.backoff_base, cap=self.backoff_cap)
        self._attempt += 1
        return wait

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

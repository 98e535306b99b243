"""Drains the outbox to the hub in order, at least once; the hub stores each message id once.

A batch leaves the outbox only after the hub's 2xx. While the hub is unreachable (or refuses us) the
forwarder backs off with jitter and keeps everything; when the hub returns it drains the backlog in
arrival order, so per-device order holds.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import random
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from gateway.errors import HubError, HubRejected
from gateway.metrics import Counters
from gateway.outbox.store import Outbox, QueuedMessage
from gateway.sync.backoff import next_backoff

log = logging.getLogger("edgegate.upstream")

# Messages per POST: big enough that a backlog drains at thousands per second, small enough that
# one request stays well under a second on a slow uplink.
BATCH = 500
# Expired messages are swept this often (they are also skipped by every read).
EXPIRE_EVERY = 60.0


class MessageUplink(Protocol):
    async def post_messages(self, messages: list[dict[str, Any]]) -> None: ...


def wire_message(message: QueuedMessage) -> dict[str, Any]:
    """The hub API's JSON for one message (see hub_mock/api.py)."""
    return {
        "message_id": message.message_id,
        "device_id": message.device_id,
        "enqueued_time": datetime.fromtimestamp(message.enqueued_at, UTC).isoformat().replace("+00:00", "Z"),
        "properties": message.properties,
        "kind": message.kind,
        "payload_b64": base64.b64encode(message.payload).decode(),
    }


class Forwarder:
    def __init__(self, outbox: Outbox, uplink: MessageUplink, *, counters: Counters | None = None,
                 jitter: Callable[[], float] = random.random, batch: int = BATCH) -> None:
        self.outbox, self.uplink, self.batch = outbox, uplink, batch
        self.counters = counters or Counters()
        self.jitter = jitter
        self.state = "starting"
        self.last_error: str | None = None
        self.last_success: datetime | None = None
        self.forwarded = 0
        self._attempt = 0

    def status(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "queue": self.outbox.depth(),
            "forwarded": self.forwarded,
            "last_success": self.last_success.isoformat() if self.last_success else None,
            "last_error": self.last_error,
        }

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        next_expiry = loop.time() + EXPIRE_EVERY
        while True:
            if loop.time() >= next_expiry:
                await self.outbox.expire()
                next_expiry = loop.time() + EXPIRE_EVERY
            self.outbox.committed.clear()
            batch = await self.outbox.peek(self.batch)
            if not batch:
                self._set_state("idle")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.outbox.committed.wait(), EXPIRE_EVERY)
                continue
            try:
                await self.uplink.post_messages([wire_message(m) for m in batch])
            except HubError as exc:
                await self._failed(exc)
                continue
            await self.outbox.remove(batch)
            self.forwarded += len(batch)
            self.counters.inc("edgegate_forwarded_total", amount=len(batch))
            self.last_success = datetime.now(UTC)
            self._attempt = 0
            self._set_state("forwarding")

    async def _failed(self, exc: HubError) -> None:
        text = str(exc)
        if text != self.last_error or self.state != "retrying":
            level = logging.ERROR if isinstance(exc, HubRejected) else logging.WARNING
            log.log(level, "cannot forward %d queued messages; keeping them and retrying: %s",
                    self.outbox.messages, text)
        self.last_error = text
        self._set_state("retrying")
        wait = next_backoff(self._attempt, self.jitter(), base=0.5, cap=30.0)
        self._attempt += 1
        await asyncio.sleep(wait)

    def _set_state(self, state: str) -> None:
        if state != self.state:
            if self.state == "retrying":
                log.info("hub accepts messages again; draining %d queued", self.outbox.messages)
            self.state = state

"""What a device connection needs from the rest of the gateway, as narrow interfaces."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol

from gateway.auth.decision import AuthPolicy
from gateway.records import DeviceRecord, InboundMessage, Submission


class DeviceDirectory(Protocol):
    """The in-memory view of the device cache (never the database per packet)."""

    def lookup(self, device_id: str) -> DeviceRecord | None: ...

    async def lookup_or_fetch(self, device_id: str) -> DeviceRecord | None:
        """Cached record, or on a miss while the hub is online, a bounded single-device fetch."""
        ...

    def auth_policy(self) -> AuthPolicy: ...


class MessageSink(Protocol):
    """Where accepted device messages go: the durable outbox."""

    def submit(self, message: InboundMessage) -> asyncio.Future[None]:
        """Queue a message; the future resolves once it is durably stored. Raises OutboxFull."""
        ...

    def submit_many(self, messages: Sequence[InboundMessage]) -> Submission:
        """Queue one device's messages in order under one future; takes a prefix of them, never more
        than fits (see gateway.outbox.store.Outbox.submit_many)."""
        ...

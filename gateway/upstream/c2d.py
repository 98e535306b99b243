"""Cloud-to-device: messages the hub holds for this gateway's devices, published into the broker on
`devices/{id}/messages/devicebound/...`. A device with a persistent session that is offline gets them
queued by the broker (QoS 1) and delivered when it reconnects."""

from __future__ import annotations

import asyncio
import base64
import logging
import random
from typing import Any, Protocol
from urllib.parse import quote

from gateway.errors import HubError
from gateway.hub.backoff import next_backoff

log = logging.getLogger("edgegate.c2d")

LONG_POLL = 25.0


class Delivery(Protocol):
    """The broker side: gateway.broker.port.BrokerPort."""

    async def deliver(self, topic: str, payload: bytes, qos: int = 1) -> None: ...


class C2DSource(Protocol):
    async def wait_c2d(self, after: int, wait: float) -> tuple[list[dict[str, Any]], int]: ...

    async def ack_c2d(self, cursor: int) -> None: ...


def devicebound_topic(device_id: str, properties: dict[str, str]) -> str:
    """IoT Hub's C2D topic, with the message properties as a URL-encoded property bag."""
    bag = "&".join(f"{quote(k, safe='$.')}={quote(v, safe='')}" for k, v in sorted(properties.items()))
    return f"devices/{device_id}/messages/devicebound/{bag}"


class CloudToDevice:
    def __init__(self, hub: C2DSource, broker: Delivery) -> None:
        self.hub, self.broker = hub, broker
        self.cursor = 0
        self.delivered = 0

    async def run(self) -> None:
        attempt = 0
        while True:
            try:
                messages, cursor = await self.hub.wait_c2d(self.cursor, LONG_POLL)
            except HubError as exc:
                if attempt == 0:
                    log.warning("cloud-to-device paused: %s", exc)
                await asyncio.sleep(next_backoff(attempt, random.random()))
                attempt += 1
                continue
            attempt = 0
            for message in messages:
                device_id = str(message["device_id"])
                payload = base64.b64decode(message["payload_b64"])
                topic = devicebound_topic(device_id, dict(message.get("properties") or {}))
                await self.broker.deliver(topic, payload, 1)
                self.delivered += 1
            if cursor != self.cursor:
                self.cursor = cursor
                try:
                    await self.hub.ack_c2d(cursor)
                except HubError as exc:
                    log.warning("could not acknowledge cloud-to-device messages up to %d: %s", cursor, exc)

"""The one way twin replies, desired patches and method calls reach a device: `Deliver`.

Unlike cloud-to-device messages, these go to exactly one connection: their $iothub topics carry no
device id, and every device subscribes to the same filters, so a broadcast would hand one device's
twin to all of them. `deliver` returns False when the device is not connected or has not subscribed
to a filter matching `topic` (a method call then fails at the hub with 404 at once).

`BrokerDelivery` is the adapter for today's amqtt broker. It touches the broker only through the
attributes named below, duck-typed, so this package never imports amqtt; the broker seam
(gateway/broker/port.py) replaces it with a `deliver` of its own.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from gateway.auth.topics import filter_matches

log = logging.getLogger("edgegate.twin")


class Deliver(Protocol):
    def __call__(self, device_id: str, topic: str, payload: bytes, qos: int) -> bool: ...


class BrokerDelivery:
    """`deliver` for amqtt 0.12.1: `_sessions[client_id] = (session, handler)`, the session's filters in
    EdgeBroker's `_filters_of` (else amqtt's `_subscriptions`), and `handler.mqtt_publish`."""

    def __init__(self, broker: Any) -> None:
        self.broker = broker
        self._sending: set[asyncio.Task[Any]] = set()

    def __call__(self, device_id: str, topic: str, payload: bytes, qos: int) -> bool:
        session, handler = self.broker._sessions.get(device_id, (None, None))
        if session is None or handler is None or session.transitions.state != "connected":
            return False
        if not any(filter_matches(f, topic) for f in self._filters(device_id, session)):
            return False
        task = asyncio.get_running_loop().create_task(handler.mqtt_publish(topic, payload, qos, retain=False))
        self._sending.add(task)
        task.add_done_callback(self._sent)
        return True

    def _filters(self, device_id: str, session: Any) -> list[str]:
        own = getattr(self.broker, "_filters_of", None)
        if own is not None:
            return list(own.get(device_id, ()))
        return [f for f, subs in self.broker._subscriptions.items() if any(s is session for s, _q in subs)]

    def _sent(self, task: asyncio.Task[Any]) -> None:
        self._sending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("delivery to a device failed: %s", task.exception())

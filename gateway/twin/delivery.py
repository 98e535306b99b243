"""The one way twin replies, desired patches and method calls reach a device: `Deliver`.

Unlike cloud-to-device messages, these go to exactly one connection: their $iothub topics carry no
device id, and every device subscribes to the same filters, so a broadcast would hand one device's
twin to all of them. `deliver` returns False when the device is not connected or has not subscribed
to a filter matching `topic` (a method call then fails at the hub with 404 at once).

The broker seam provides it: gateway.broker.port.BrokerPort.deliver_to.
"""

from __future__ import annotations

import logging
from typing import Protocol

log = logging.getLogger("edgegate.twin")


class Deliver(Protocol):
    def __call__(self, device_id: str, topic: str, payload: bytes, qos: int) -> bool: ...

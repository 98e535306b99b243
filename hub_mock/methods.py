"""Direct methods and desired-patch notices on their way to gateways, and which gateways are online.

Nothing here is stored: a method call lives as long as its caller waits, and IoT Hub does not replay
desired patches to a device that missed them (a device GETs its twin after reconnecting). So the events
a gateway long-polls are kept in memory, numbered by `seq`; a gateway whose cursor is ahead of `seq`
(the hub restarted) is told the current cursor and starts again from there.

A gateway counts as online while it has a long poll open, or closed one less than `GRACE` seconds ago
(the time between two polls). A method for a device behind an offline gateway fails at once with 404,
as IoT Hub answers for a device that is not connected.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

# A gateway reopens its poll at once; this much silence means it is gone.
GRACE = 5.0
# Events kept for gateways that are behind; older ones are dropped (method calls expire long before).
MAX_EVENTS = 10_000
# IoT Hub's limits for a direct method's response timeout: 5..300 s.
MIN_TIMEOUT, MAX_TIMEOUT = 5, 300


@dataclass(frozen=True, slots=True)
class DeviceEvent:
    """Something for one device: a desired patch (`version`, `patch`) or a method call."""

    seq: int
    gateway_id: str
    device_id: str
    kind: str  # "desired" | "method"
    body: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "kind": self.kind, "device_id": self.device_id, **self.body}


@dataclass(slots=True)
class MethodOutcome:
    status: int
    payload: Any
    delivered: bool = True  # False: the gateway says the device is not connected


@dataclass(slots=True)
class DeviceEvents:
    """The in-memory event log, the method calls waiting for an answer, and gateway presence."""

    events: deque[DeviceEvent] = field(default_factory=lambda: deque(maxlen=MAX_EVENTS))
    pending: dict[str, tuple[str, asyncio.Future[MethodOutcome]]] = field(default_factory=dict)
    polling: Counter[str] = field(default_factory=Counter)
    last_poll: dict[str, float] = field(default_factory=dict)
    _seq: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    latest: int = 0

    def add(self, gateway_id: str, device_id: str, kind: str, body: dict[str, Any]) -> DeviceEvent:
        self.latest = next(self._seq)
        event = DeviceEvent(self.latest, gateway_id, device_id, kind, body)
        self.events.append(event)
        return event

    def after(self, gateway_id: str, cursor: int) -> list[DeviceEvent]:
        return [e for e in self.events if e.seq > cursor and e.gateway_id == gateway_id]

    # -- presence -----------------------------------------------------------------------------------

    def poll_started(self, gateway_id: str) -> None:
        self.polling[gateway_id] += 1

    def poll_ended(self, gateway_id: str, now: float) -> None:
        self.polling[gateway_id] -= 1
        self.last_poll[gateway_id] = now

    def online(self, gateway_id: str, now: float) -> bool:
        return self.polling[gateway_id] > 0 or now - self.last_poll.get(gateway_id, -GRACE - 1) <= GRACE

    # -- method calls -------------------------------------------------------------------------------

    def call(self, gateway_id: str, device_id: str, method: str, payload: Any,
             timeout: int) -> tuple[str, asyncio.Future[MethodOutcome]]:
        request_id = uuid.uuid4().hex
        future: asyncio.Future[MethodOutcome] = asyncio.get_running_loop().create_future()
        self.pending[request_id] = (device_id, future)
        self.add(gateway_id, device_id, "method",
                 {"request_id": request_id, "method": method, "payload": payload, "timeout": timeout})
        return request_id, future

    def answer(self, request_id: str, device_id: str, outcome: MethodOutcome) -> bool:
        """A gateway's answer to a call; False if nobody waits for it (late, unknown or another device's)."""
        entry = self.pending.get(request_id)
        if entry is None or entry[0] != device_id or entry[1].done():
            return False
        entry[1].set_result(outcome)
        return True

    def forget(self, request_id: str) -> None:
        self.pending.pop(request_id, None)

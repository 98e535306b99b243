"""Direct methods: a call from the hub goes to the one device it names; the device's answer goes back.

A call waits here until the device answers or its timeout passes; an answer nobody asked for (another
device's $rid, a late one) is counted and dropped. A call for a device that is not connected, or has
not subscribed to $iothub/methods/POST/#, is answered 404 at once so the caller is not kept waiting.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import Any, Protocol

from gateway.auth.topics import METHOD_REQUEST
from gateway.errors import HubError
from gateway.metrics import Counters
from gateway.twin.delivery import Deliver

log = logging.getLogger("edgegate.methods")

# IoT Hub's method names; anything else could not be a topic level.
METHOD_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,128}")
# Calls waiting for an answer at once; IoT Hub's own per-device queue is far smaller.
MAX_PENDING = 10_000


class MethodHub(Protocol):
    async def method_response(self, request_id: str, device_id: str, status: int, payload: Any,
                              *, delivered: bool = True) -> bool: ...


class MethodRelay:
    def __init__(self, hub: MethodHub, deliver: Deliver, counters: Counters | None = None) -> None:
        self.hub, self.deliver = hub, deliver
        self.counters = counters or Counters()
        self._pending: dict[tuple[str, str], asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    async def on_call(self, device_id: str, request_id: str, method: str, payload: Any, answer_within: float) -> None:
        """A call from the hub: hand it to the device, or tell the hub at once why not."""
        if not METHOD_NAME.fullmatch(method) or len(self._pending) >= MAX_PENDING:
            await self._answer(request_id, device_id, 400, {"message": f"method name {method!r} not allowed"})
            return
        body = json.dumps(payload, separators=(",", ":")).encode()
        if not self.deliver(device_id, METHOD_REQUEST.format(method=method, rid=request_id), body, 0):
            self.counters.inc("edgegate_method_calls_total", outcome="not_connected")
            await self._answer(request_id, device_id, 404, {"message": f"device {device_id} is not connected "
                               "to this gateway or has not subscribed to $iothub/methods/POST/#"}, delivered=False)
            return
        self.counters.inc("edgegate_method_calls_total", outcome="delivered")
        key = (device_id, request_id)
        self._pending[key] = asyncio.get_running_loop().call_later(answer_within, self._pending.pop, key, None)

    def respond(self, device_id: str, rid: str, status: int, body: bytes) -> None:
        """The device's answer on $iothub/methods/res/{status}/?$rid={rid}."""
        timer = self._pending.pop((device_id, rid), None)
        if timer is None:
            self.counters.inc("edgegate_method_responses_dropped_total")
            log.warning("method response from device=%s rid=%s dropped: no call of this device waits for it "
                        "(timed out, or another device's request id)", device_id, rid[:64])
            return
        timer.cancel()
        try:
            payload = json.loads(body) if body else None
        except (ValueError, UnicodeDecodeError):
            payload = body.decode("utf-8", "replace")
        task = asyncio.get_running_loop().create_task(self._answer(rid, device_id, status, payload))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, request_id: str, device_id: str, status: int, payload: Any,
                      *, delivered: bool = True) -> None:
        try:
            if not await self.hub.method_response(request_id, device_id, status, payload, delivered=delivered):
                log.info("the hub no longer waits for method call %s of device=%s", request_id, device_id)
        except HubError as exc:
            log.warning("method answer for device=%s lost: %s", device_id, exc)

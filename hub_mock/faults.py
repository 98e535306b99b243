"""Fault switches for drills: they act on the gateway-facing API only; the admin API stays reachable.

down        stop listening (connections refused)        up      listen again on the same port
blackhole   accept TCP, never answer                     clear   back to normal (all switches off)
error S     every API call answers status S             latency MS  every API call waits MS first
poison S    a message batch holding a payload with POISON_MARKER is refused with status S (400-499),
            with "permanent": true; every other batch is stored as usual
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, replace
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from hub_mock.errors import Invalid
from hub_mock.ingest import POISON_MARKER, poisoned_ids
from hub_mock.listener import ListenerMode, SwitchableListener

log = logging.getLogger("hub_mock.faults")

ACTIONS = ("down", "up", "blackhole", "error", "latency", "clear", "poison")
MAX_LATENCY_MS = 600_000  # ten minutes: longer than any client timeout worth testing


@dataclass(frozen=True, slots=True)
class Faults:
    mode: ListenerMode = ListenerMode.SERVING
    error_status: int | None = None
    latency_ms: int = 0
    poison_status: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode.value, "error_status": self.error_status, "latency_ms": self.latency_ms,
                "poison_status": self.poison_status}


def apply_fault(current: Faults, action: str, value: int | None = None) -> Faults:
    """The fault state after `action` (with its status or milliseconds); Invalid for a bad request."""
    if action == "down":
        return replace(current, mode=ListenerMode.DOWN)
    if action == "up":
        return replace(current, mode=ListenerMode.SERVING)
    if action == "blackhole":
        return replace(current, mode=ListenerMode.BLACKHOLE)
    if action == "clear":
        return Faults()
    if action == "error":
        if value is None or not 400 <= value <= 599:
            raise Invalid(f"error needs an HTTP status 400-599, got {value!r}")
        return replace(current, error_status=value)
    if action == "latency":
        if value is None or not 0 <= value <= MAX_LATENCY_MS:
            raise Invalid(f"latency needs milliseconds 0-{MAX_LATENCY_MS}, got {value!r}")
        return replace(current, latency_ms=value)
    if action == "poison":
        if value is None or not 400 <= value <= 499:
            raise Invalid(f"poison needs an HTTP status 400-499, got {value!r}")
        return replace(current, poison_status=value)
    raise Invalid(f"unknown fault {action!r}; one of {', '.join(ACTIONS)}")


class FaultSwitch:
    """The current faults, and the listener they drive."""

    def __init__(self, listener: SwitchableListener) -> None:
        self.current = Faults()
        self._listener = listener
        self._lock = asyncio.Lock()

    async def apply(self, action: str, value: int | None = None) -> Faults:
        async with self._lock:
            faults = apply_fault(self.current, action, value)
            if faults.mode is not self._listener.mode:
                await self._listener.switch(faults.mode)
            self.current = faults
        log.warning("fault %s%s: now %s", action, "" if value is None else f" {value}", faults.to_json())
        return faults


def fault_middleware(switch: FaultSwitch) -> Middleware:
    """Injected latency first, then an injected error status, before the API sees the request."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        faults = switch.current
        if faults.latency_ms:
            await asyncio.sleep(faults.latency_ms / 1000)
        if faults.poison_status is not None and request.method == "POST" and request.path.endswith("/messages"):
            refused = poisoned_batch(await request.read(), faults.poison_status)
            if refused is not None:
                return refused
        if faults.error_status is not None:
            return web.json_response(
                {
                    "reason": "fault_injected",
                    "message": f"hub-mock fault switch: every API call answers {faults.error_status}",
                },
                status=faults.error_status,
            )
        return await handler(request)

    return middleware


def poisoned_batch(body: bytes, status: int) -> web.Response | None:
    """The refusal of a message batch that holds a poisoned payload (None: store it as usual)."""
    ids = poisoned_ids(body)
    if not ids:
        return None
    return web.json_response(
        {
            "reason": "poison_message",
            "message": f"hub-mock poison switch: payload of message {ids[0]} contains {POISON_MARKER.decode()}",
            "permanent": True,
        },
        status=status,
    )

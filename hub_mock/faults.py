"""Fault switches for drills: they act on the gateway-facing API only; the admin API stays reachable.

down        stop listening (connections refused)        up      listen again on the same port
blackhole   accept TCP, never answer                     clear   back to normal (all switches off)
error S     every API call answers status S             latency MS  every API call waits MS first
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, replace
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from hub_mock.errors import Invalid
from hub_mock.listener import ListenerMode, SwitchableListener

log = logging.getLogger("hub_mock.faults")

ACTIONS = ("down", "up", "blackhole", "error", "latency", "clear")
MAX_LATENCY_MS = 600_000  # ten minutes: longer than any client timeout worth testing


@dataclass(frozen=True, slots=True)
class Faults:
    mode: ListenerMode = ListenerMode.SERVING
    error_status: int | None = None
    latency_ms: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode.value, "error_status": self.error_status, "latency_ms": self.latency_ms}


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

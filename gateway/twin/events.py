"""The long poll that brings desired patches and method calls down from the hub, as soon as it has them."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from typing import Any, Protocol

from gateway.errors import HubError, StorageError
from gateway.hub.backoff import next_backoff
from gateway.twin.health import RETRY_CAP, HubHealth
from gateway.twin.methods import MethodRelay
from gateway.twin.service import TwinService

log = logging.getLogger("edgegate.twin")

LONG_POLL = 25.0


class EventSource(Protocol):
    async def wait_device_events(self, after: int, wait: float) -> tuple[list[dict[str, Any]], int]: ...


class DeviceEventsPoll:
    def __init__(self, hub: EventSource, twins: TwinService, methods: MethodRelay, health: HubHealth,
                 clock: Callable[[], float] = time.time) -> None:
        self.hub, self.twins, self.methods, self.health, self.clock = hub, twins, methods, health, clock
        self.cursor = -1  # "from now on": calls and patches from before we started are not ours to replay

    async def run(self) -> None:
        attempt = 0
        while True:
            try:
                events, cursor = await self.hub.wait_device_events(self.cursor, LONG_POLL)
            except HubError as exc:
                self.health.failed(str(exc), self.clock())
                await asyncio.sleep(next_backoff(attempt, random.random(), cap=RETRY_CAP))
                attempt += 1
                continue
            attempt = 0
            self.health.worked(self.clock())
            for event in events:
                try:
                    await self._dispatch(event)
                except (KeyError, TypeError, ValueError) as exc:
                    log.warning("device event from the hub ignored, malformed: %r (%s)", event, exc)
                except StorageError as exc:
                    log.error("device event from the hub not applied to the twin cache: %s", exc)
            self.cursor = cursor

    async def _dispatch(self, event: dict[str, Any]) -> None:
        device_id = str(event["device_id"])
        if event["kind"] == "desired":
            patch = event["patch"]
            if not isinstance(patch, dict):
                raise ValueError("patch is not an object")
            await self.twins.on_desired(device_id, int(event["version"]), patch)
        elif event["kind"] == "method":
            await self.methods.on_call(device_id, str(event["request_id"]), str(event["method"]),
                                       event.get("payload"), float(event["timeout"]))
        else:
            raise ValueError(f"unknown kind {event['kind']!r}")

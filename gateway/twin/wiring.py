"""Builds the twin and method parts and the sink that routes device messages to them (used by runtime)."""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from gateway.db.engine import open_engine
from gateway.frontdoor.services import MessageSink
from gateway.hub.client import HubClient
from gateway.metrics import Counters
from gateway.twin.delivery import Deliver
from gateway.twin.events import DeviceEventsPoll
from gateway.twin.health import HubHealth
from gateway.twin.methods import MethodRelay
from gateway.twin.router import TwinRouter
from gateway.twin.service import TwinService, iso_utc
from gateway.twin.store import TwinStore


@dataclass(slots=True)
class TwinParts:
    store: TwinStore
    service: TwinService
    sink: TwinRouter
    tasks: tuple[tuple[str, Callable[[], Coroutine[Any, Any, None]]], ...]  # (name, start) run for the lifetime

    def close(self) -> None:
        self.store.close()

    def status(self) -> dict[str, Any]:
        """For status.json: cached twins, reported patches waiting for the hub, the hub as twins see it."""
        health = self.service.health
        return {"cached_twins": len(self.store), "queued_reported_patches": self.store.queued_total,
                "hub": "reachable" if health.up else f"unreachable since {iso_utc(health.since)}: {health.why}"}


async def start_twins(url: str, outbox: MessageSink, hub: HubClient | None, deliver: Deliver,
                      counters: Counters) -> TwinParts:
    """Open the twin cache and queue at `url`; the sink goes to the front door, the tasks to the loop."""
    store = TwinStore(open_engine(url))
    await store.open()
    health = HubHealth(time.time())
    service = TwinService(store, hub, deliver, health, counters=counters)
    methods = MethodRelay(hub, deliver, counters) if hub is not None else None
    tasks: tuple[tuple[str, Callable[[], Coroutine[Any, Any, None]]], ...] = ()
    if hub is not None and methods is not None:
        tasks = (("twin-reported-flush", service.flush_forever),
                 ("device-events", DeviceEventsPoll(hub, service, methods, health).run))
    return TwinParts(store, service, TwinRouter(outbox, service, methods, counters), tasks)

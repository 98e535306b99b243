"""Twin GETs, reported patches and desired patches for the gateway's child devices.

- GET: asked of the hub when it answers; the answer (with any reported patches still queued here laid
  over it) refreshes the cache. When the hub does not answer within `ONLINE_BUDGET`, or is known to be
  down, the cached twin is sent, and the log says it is the cached copy and from when.
- Reported patch: committed to the queue (store.py) before its future resolves (the PUBACK waits on
  it), then sent to the hub in order, each once (`patch_id`). The 204 goes out when the hub has the
  patch (with its `$version`), or at once with the cache's version when the hub is down or slow.
- Desired patch (from the hub): applied to the cache and delivered to the device if it is connected
  and subscribed; a device that was away GETs its twin on reconnecting, as with IoT Hub.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from gateway.auth.topics import DESIRED_PATCH, TWIN_RESPONSE, TWIN_RESPONSE_VERSIONED
from gateway.errors import HubError, StorageError
from gateway.hub.backoff import next_backoff
from gateway.metrics import Counters
from gateway.twin.delivery import Deliver
from gateway.twin.documents import Twin, parse_patch, parse_twin
from gateway.twin.health import RETRY_CAP, HubHealth
from gateway.twin.store import QueuedPatch, TwinStore

log = logging.getLogger("edgegate.twin")

# A device's GET waits at most this long for the hub before it gets the cached twin instead.
ONLINE_BUDGET = 3.0
# A reported patch's 204 waits this long for the hub's $version before it gets the cache's.
REPLY_BUDGET = 3.0
# Reported patches waiting for the hub, per device and in all (JSON bytes): past either, a patch is
# refused with 429 (IoT Hub's "throttled") and not acknowledged as stored. A device reporting once a
# minute fills its share in about 17 hours of outage; the byte bound keeps the queue's memory small.
MAX_QUEUED_PER_DEVICE = 1000
MAX_QUEUED_BYTES = 16 * 1024 * 1024
# Twin GETs of one device waiting for the hub at once; more are answered 429.
MAX_GETS_IN_FLIGHT = 4


class TwinHub(Protocol):
    async def get_twin(self, device_id: str) -> dict[str, Any] | None: ...

    async def patch_reported(self, device_id: str, patch_id: str, patch: dict[str, Any]) -> int | None: ...


def iso_utc(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class TwinService:
    def __init__(self, store: TwinStore, hub: TwinHub | None, deliver: Deliver, health: HubHealth, *,
                 counters: Counters | None = None, clock: Callable[[], float] = time.time) -> None:
        self.store, self.hub, self.deliver, self.health = store, hub, deliver, health
        self.counters = counters or Counters()
        self.clock = clock
        self._tasks: set[asyncio.Task[Any]] = set()
        self._wake = asyncio.Event()
        # patch_id -> (device, rid, the cache's version for it, the timer that answers without the hub)
        self._replies: dict[str, tuple[str, str, int, asyncio.TimerHandle | None]] = {}
        self._gets: dict[str, int] = {}  # device -> GETs in flight

    # ---- from devices ------------------------------------------------------------------------------

    def get(self, device_id: str, rid: str) -> None:
        if self._gets.get(device_id, 0) >= MAX_GETS_IN_FLIGHT:
            self.counters.inc("edgegate_twin_get_throttled_total")
            self._reply(device_id, TWIN_RESPONSE.format(status=429, rid=rid),
                        {"message": f"at most {MAX_GETS_IN_FLIGHT} twin GETs per device at once; wait for the answers"})
            return
        self._gets[device_id] = self._gets.get(device_id, 0) + 1
        self._spawn(self._get_counted(device_id, rid))

    async def _get_counted(self, device_id: str, rid: str) -> None:
        try:
            fresh = await self._get(device_id, rid)
        finally:
            left = self._gets.get(device_id, 1) - 1
            if left > 0:
                self._gets[device_id] = left
            else:
                self._gets.pop(device_id, None)
        if fresh is not None:  # after the answer: the device does not wait for the cache write
            await self.store.remember(device_id, fresh, self.clock(), full=True)

    def reported(self, device_id: str, rid: str, body: bytes) -> asyncio.Future[None]:
        """Queue a reported patch; the future resolves once it is durable (fails: not acknowledged)."""
        loop = asyncio.get_running_loop()
        durable: asyncio.Future[None] = loop.create_future()
        patch, why = parse_patch(body)
        if patch is None:
            self.counters.inc("edgegate_twin_patch_refused_total")
            log.warning("reported patch refused device=%s rid=%s: %s", device_id, rid, why)
            self._reply(device_id, TWIN_RESPONSE.format(status=400, rid=rid), {"message": why})
            durable.set_result(None)
            return durable
        refusal = self._queue_full(device_id, len(body))
        if refusal:
            self.counters.inc("edgegate_twin_patch_throttled_total")
            log.warning("reported patch throttled device=%s rid=%s: %s", device_id, rid, refusal)
            self._reply(device_id, TWIN_RESPONSE.format(status=429, rid=rid), {"message": refusal})
            durable.set_result(None)
            return durable
        self._spawn(self._queue(device_id, rid, patch, durable))
        return durable

    def _queue_full(self, device_id: str, size: int) -> str:
        if self.store.queued(device_id) >= MAX_QUEUED_PER_DEVICE:
            return (f"{MAX_QUEUED_PER_DEVICE} reported patches of this device already wait for the hub; "
                    "report less often while the hub is unreachable")
        if self.store.queued_bytes + size > MAX_QUEUED_BYTES:
            return f"the gateway's queue of reported patches is full ({MAX_QUEUED_BYTES} bytes); try again later"
        return ""

    async def _get(self, device_id: str, rid: str) -> Twin | None:
        """Answer one GET; returns the hub's twin when the cache should be rewritten with it."""
        if self.hub is not None and self.health.up:
            try:
                async with asyncio.timeout(ONLINE_BUDGET):
                    document = await self.hub.get_twin(device_id)
            except (HubError, TimeoutError, ValueError) as exc:
                self.health.failed(str(exc) or "no answer within the twin GET budget", self.clock())
            else:
                self.health.worked(self.clock())
                if document is None:
                    self._reply(device_id, TWIN_RESPONSE.format(status=404, rid=rid),
                                {"message": f"the hub has no twin for {device_id} in this gateway's scope"})
                    return None
                twin = parse_twin(document)
                for queued in self.store.pending(device_id):
                    twin = twin.with_reported(queued.patch)
                self.counters.inc("edgegate_twin_get_total", source="hub")
                self._reply(device_id, TWIN_RESPONSE.format(status=200, rid=rid), twin.to_device_json())
                known = self.store.cached(device_id)
                if known is not None and known.twin == twin:
                    self.store.confirmed(device_id, self.clock())  # unchanged: no write per GET
                    return None
                return twin
        cached = self.store.cached(device_id)
        if cached is None:
            self.counters.inc("edgegate_twin_get_total", source="none")
            log.warning("twin GET device=%s: the hub is unreachable and no cached twin exists; answered 503",
                        device_id)
            self._reply(device_id, TWIN_RESPONSE.format(status=503, rid=rid),
                        {"message": "the hub is unreachable and the gateway has no copy of this twin yet"})
            return None
        self.counters.inc("edgegate_twin_get_total", source="cache")
        fetched = iso_utc(cached.fetched_at) if cached.fetched_at else "never (built from patches only)"
        log.info("twin GET device=%s answered from the cached copy (from the hub at %s, last changed %s): "
                 "the hub is unreachable", device_id, fetched, iso_utc(cached.updated_at))
        self._reply(device_id, TWIN_RESPONSE.format(status=200, rid=rid), cached.twin.to_device_json())
        return None

    async def _queue(self, device_id: str, rid: str, patch: dict[str, Any], durable: asyncio.Future[None]) -> None:
        try:
            queued, version = await self.store.queue_reported(device_id, patch, self.clock())
        except Exception as exc:  # StorageError: not durable, so not acknowledged
            log.error("reported patch of device=%s not stored; not acknowledged: %s", device_id, exc)
            if not durable.done():
                durable.set_exception(exc)
            return
        self.counters.inc("edgegate_twin_patch_queued_total")
        if not durable.done():
            durable.set_result(None)
        timer = None
        if self.hub is not None and self.health.up:
            timer = asyncio.get_running_loop().call_later(REPLY_BUDGET, self._reply_from_cache, queued.patch_id)
        self._replies[queued.patch_id] = (device_id, rid, version, timer)
        if timer is None:
            self._reply_from_cache(queued.patch_id)
        self._wake.set()

    def _reply_from_cache(self, patch_id: str) -> None:
        entry = self._replies.pop(patch_id, None)
        if entry is not None:
            device_id, rid, version, _timer = entry
            self._reply(device_id, TWIN_RESPONSE_VERSIONED.format(status=204, rid=rid, version=version), None)

    # ---- to the hub --------------------------------------------------------------------------------

    async def flush_forever(self) -> None:
        """Send queued reported patches to the hub, oldest first, each until the hub has it."""
        assert self.hub is not None
        attempt = 0
        while True:
            queued = self.store.oldest()
            if queued is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                version = await self.hub.patch_reported(queued.device_id, queued.patch_id, queued.patch)
            except HubError as exc:
                self.health.failed(str(exc), self.clock())
                for patch_id in list(self._replies):
                    self._reply_from_cache(patch_id)
                await self.health.wait_back(next_backoff(attempt, random.random(), cap=RETRY_CAP))
                attempt += 1
                continue
            attempt = 0
            self.health.worked(self.clock())
            try:
                await self._delivered(queued, version)
            except StorageError as exc:
                # The hub has it; sent again later under the same patch_id, it changes nothing there.
                log.error("could not remove a delivered reported patch from the queue: %s", exc)
                await asyncio.sleep(next_backoff(0, random.random()))

    async def _delivered(self, queued: QueuedPatch, version: int | None) -> None:
        if version is None:
            log.warning("reported patch %s of device=%s dropped: the hub no longer has the device in this "
                        "gateway's scope", queued.patch_id, queued.device_id)
        await self.store.delivered(queued, version)
        self.counters.inc("edgegate_twin_patch_sent_total")
        entry = self._replies.pop(queued.patch_id, None)
        if entry is not None:
            device_id, rid, cached_version, timer = entry
            if timer is not None:
                timer.cancel()
            self._reply(device_id, TWIN_RESPONSE_VERSIONED.format(
                status=204, rid=rid, version=version if version is not None else cached_version), None)

    # ---- from the hub ------------------------------------------------------------------------------

    async def on_desired(self, device_id: str, version: int, patch: dict[str, Any]) -> None:
        cached = self.store.cached(device_id)
        if cached is not None and version > cached.twin.desired_version + 1:
            # Patches were missed (the gateway was down, or started after them): a patch applies only
            # to the version just before it, so take the whole twin from the hub instead.
            await self._refresh(device_id)
        elif cached is not None:
            changed: Twin = cached.twin.with_desired(patch, version)
            if changed is not cached.twin:
                await self.store.remember(device_id, changed, self.clock(), full=False)
        body = json.dumps({**patch, "$version": version}, separators=(",", ":")).encode()
        if self.deliver(device_id, DESIRED_PATCH.format(version=version), body, 0):
            self.counters.inc("edgegate_twin_desired_delivered_total")
        else:
            log.info("desired patch v%d for device=%s kept in the cache only: the device is not subscribed "
                     "now (it gets the latest desired state with its next twin GET)", version, device_id)

    async def _refresh(self, device_id: str) -> None:
        """Replace the cached twin with the hub's (with our queued patches laid over it), if it answers."""
        if self.hub is None:
            return
        try:
            document = await self.hub.get_twin(device_id)
        except HubError as exc:
            log.warning("cached twin of device=%s is behind the hub and could not be refreshed: %s", device_id, exc)
            return
        if document is not None:
            twin = parse_twin(document)
            for queued in self.store.pending(device_id):
                twin = twin.with_reported(queued.patch)
            await self.store.remember(device_id, twin, self.clock(), full=True)

    # ---- plumbing ----------------------------------------------------------------------------------

    def _reply(self, device_id: str, topic: str, body: Any) -> None:
        payload = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
        if not self.deliver(device_id, topic, payload, 0):
            log.info("twin answer for device=%s not delivered (not connected, or not subscribed to "
                     "$iothub/twin/res/#): %s", device_id, topic)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("twin request failed: %r", task.exception())

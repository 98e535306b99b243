"""The sync loop: keeps the device cache current while the hub is there, and never evicts when it is not.

    start: the directory already serves the persisted cache
    full sync (paged scope + registered CAs, applied only when complete)
      -> follow the change feed by long poll (a revocation arrives as soon as the hub has it)
         a long poll that keeps failing while plain requests work falls back to a delta every
         `delta_interval`
      -> full sync again every `full_resync_interval`, after a registry reset, and on every reconnect
    any HubError: state OFFLINE or REJECTED, back off with jitter, then reconnect (full sync)

A failed sync changes nothing in the cache. Time for decisions comes from `clock`; waits use the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from gateway.cache.directory import DeviceDirectory
from gateway.cache.records import CacheChanges
from gateway.errors import HubRejected, HubUnavailable, StorageError
from gateway.hub.backoff import BACKOFF_BASE, BACKOFF_CAP, next_backoff
from gateway.hub.client import HubClient
from gateway.hub.sync_state import HubState, SyncOutcome, advance
from gateway.hub.wire import ChangePage
from gateway.metrics import Counters
from gateway.records import DeviceRecord
from gateway.service.supervisor import Supervisor

log = logging.getLogger("edgegate.sync")

# Devices per scope page / changes per feed page: the hub allows up to 5000; 1000 keeps each answer
# around 200 KB, cheap to parse on a Raspberry Pi without starving the event loop.
DEFAULT_PAGE_SIZE = 1000
# Long polls failing in a row (while a plain request right after works) before falling back to deltas.
LONG_POLL_FAILURES_BEFORE_FALLBACK = 3


def changes_from_page(page: ChangePage, fetched_at: datetime) -> CacheChanges:
    """A change-feed page as cache changes: upserts, removals (deletes and moves out), the registered CAs
    when one of them changed, the new cursor."""
    upserts: list[DeviceRecord] = []
    deletes: list[str] = []
    for change in page.changes:
        if change.device is None:
            deletes.append(change.device_id)
        else:
            upserts.append(change.device)
    return CacheChanges(fetched_at=fetched_at, upserts=tuple(upserts), deletes=tuple(deletes), sequence=page.sequence,
                        cas=page.cas)


class RegistrySync:
    """Runs the sync loop as a task between `start()` and `stop()`."""

    def __init__(
        self,
        directory: DeviceDirectory,
        client: HubClient,
        *,
        clock: Callable[[], datetime],
        full_resync_interval: timedelta = timedelta(hours=1),
        delta_interval: timedelta = timedelta(seconds=30),
        long_poll_wait: timedelta = timedelta(seconds=25),
        page_size: int = DEFAULT_PAGE_SIZE,
        backoff_base: float = BACKOFF_BASE,
        backoff_cap: float = BACKOFF_CAP,
        jitter: Callable[[], float] = random.random,
        supervisor: Supervisor | None = None,
        on_state: Callable[[HubState], None] = lambda _: None,
    ) -> None:
        self.directory = directory
        self.client = client
        self.clock = clock
        self.full_resync_interval = full_resync_interval.total_seconds()
        self.delta_interval = delta_interval.total_seconds()
        self.long_poll_wait = long_poll_wait.total_seconds()
        self.page_size = page_size
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.jitter = jitter
        self.state = HubState.STARTING
        self.on_state = on_state  # told each change of state (the status writer writes at once)
        self.full_syncs = 0
        self.long_poll = True
        self._task: asyncio.Task[None] | None = None
        # `run` retries every failure itself; the supervisor is for what would still end it.
        self.supervisor = supervisor or Supervisor(Counters())

    # -- life cycle ----------------------------------------------------------------------------------

    def start(self) -> None:
        """Start syncing in the background; the directory keeps serving whatever it holds meanwhile."""
        if self._task is None:
            log.info("serving %d cached devices (cursor %s); syncing with the hub at %s",
                     len(self.directory), self.directory.sequence, self.client.url)
            self._task = self.supervisor.owned("registry-sync", self.run)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def describe(self) -> dict[str, Any]:
        """The sync's state as JSON-able values, for status.json."""
        status = self.directory.status

        def iso(value: datetime | None) -> str | None:
            return value.isoformat() if value is not None else None

        return {
            "state": self.state.value,
            "online_since": iso(status.online_since),
            "offline_since": iso(status.offline_since),
            "last_success_at": iso(status.last_success_at),
            "last_attempt_at": iso(status.last_attempt_at),
            "last_full_sync_at": iso(status.last_full_sync_at),
            "last_error": status.last_error,
            "cached_devices": len(self.directory),
            "sequence": self.directory.sequence,
            "long_poll": self.long_poll,
        }

    # -- the loop ------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Sync until cancelled."""
        loop = asyncio.get_running_loop()
        failures = 0
        while True:
            try:
                await self.full_sync()
                failures = 0
                await self._follow(loop.time() + self.full_resync_interval)
                continue
            except HubRejected as exc:
                await self._outcome(SyncOutcome.REJECTED, self.clock(), error=str(exc))
            except HubUnavailable as exc:
                await self._outcome(SyncOutcome.UNAVAILABLE, self.clock(), error=str(exc))
            except StorageError as exc:
                log.error("the device cache could not be saved (memory is current, retrying): %s", exc)
            except Exception:
                # A bug must not end syncing for good: the cache would silently age from here on.
                log.exception("registry sync failed unexpectedly; retrying")
            delay = next_backoff(failures, self.jitter(), base=self.backoff_base, cap=self.backoff_cap)
            failures += 1
            log.debug("next sync attempt in %.1fs", delay)
            await asyncio.sleep(delay)

    async def full_sync(self) -> None:
        """Read the whole device scope and the registered CAs, then apply them as one snapshot.

        The cursor is the sequence of the first page: changes made while paging are replayed from the
        feed, and replaying a change is harmless because the feed carries current records.
        """
        started = self.clock()
        devices: list[DeviceRecord] = []
        after: str | None = None
        cursor: int | None = None
        while True:
            page = await self.client.scope_page(after, self.page_size)
            cursor = page.sequence if cursor is None else cursor
            devices.extend(page.devices)
            if page.next is None:
                break
            after = page.next
        cas = await self.client.cas()
        revoked = await self.directory.apply(
            CacheChanges(fetched_at=self.clock(), upserts=tuple(devices), sequence=cursor, full=True, cas=cas)
        )
        self.full_syncs += 1
        self.long_poll = True
        log.info("full sync: %d devices, %d registered CAs, cursor %d, %d sessions revoked",
                 len(devices), len(cas), cursor, len(revoked))
        await self._outcome(SyncOutcome.SYNCED, started, full_sync=True)

    async def _follow(self, resync_at: float) -> None:
        """Apply the change feed until a full resync is due."""
        loop = asyncio.get_running_loop()
        long_poll_failures = 0
        while (remaining := resync_at - loop.time()) > 0:
            started = self.clock()
            since = self.directory.sequence or 0
            if self.long_poll:
                try:
                    page = await self.client.wait_changes(since, self.page_size, min(self.long_poll_wait, remaining))
                    long_poll_failures = 0
                except HubUnavailable as exc:
                    # A plain request tells a hub that is gone from a long poll that cannot get through.
                    page = await self.client.changes(since, self.page_size)
                    long_poll_failures += 1
                    if long_poll_failures >= LONG_POLL_FAILURES_BEFORE_FALLBACK:
                        self.long_poll = False
                        log.warning("long polls keep failing (%s) while plain requests work: polling the "
                                    "change feed every %gs until the next full sync", exc, self.delta_interval)
            else:
                await asyncio.sleep(min(self.delta_interval, remaining))
                started = self.clock()
                page = await self.client.changes(since, self.page_size)
            if page.reset:
                log.warning("the hub's change sequence is behind our cursor %d (registry reset?): full sync", since)
                return
            await self.directory.apply(changes_from_page(page, self.clock()))
            await self._outcome(SyncOutcome.SYNCED, started)

    async def _outcome(
        self, outcome: SyncOutcome, started: datetime, *, error: str | None = None, full_sync: bool = False
    ) -> None:
        step = advance(
            self.state,
            self.directory.status,
            outcome,
            started,
            error=error,
            full_sync=full_sync,
            cached_devices=len(self.directory),
        )
        changed, self.state = step.state is not self.state, step.state
        if changed:
            self.on_state(step.state)
        if step.announcement is not None:
            log.log(step.level, "%s", step.announcement)
        elif error is not None:
            log.debug("sync attempt failed: %s", error)
        try:
            await self.directory.set_status(step.status)
        except StorageError as exc:
            log.error("the sync state could not be saved: %s", exc)

"""DeviceDirectory: the device cache in memory, kept coherent with its tables, with revocation callbacks.

The front door asks it about a device on every CONNECT (`lookup`: a dict lookup, never the database).
The sync loop feeds it (`apply`, `set_status`). Memory changes first and revocation callbacks fire at
once, then the tables follow on the database thread: a disable takes effect even while the disk fails;
the tables are then rewritten whole on the next write.

The front door's protocol also asks for `auth_policy()`; the directory deliberately does not build one.
The assembly builds `AuthPolicy(gateway_id, directory.anchors(), clock_skew, directory.cache_fresh())`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta

from cryptography import x509

from gateway.cache.anchors import build_anchors
from gateway.cache.freshness import cache_usable
from gateway.cache.merge import accept_fetched, diff_snapshot
from gateway.cache.records import CacheChanges, CacheSnapshot, RegisteredCA, SyncStatus
from gateway.cache.repository import CacheRepository
from gateway.cache.revocation import RevocationReason, revocation_reason
from gateway.db.engine import DatabaseThread
from gateway.errors import HubError, StorageError
from gateway.records import DeviceRecord, TrustAnchors

log = logging.getLogger("edgegate.cache")

Fetcher = Callable[[str], Awaitable[DeviceRecord | None]]
RevocationCallback = Callable[[str, str], object]
AnchorsCallback = Callable[[TrustAnchors, TrustAnchors, tuple[RegisteredCA, ...]], object]

# Misses remembered for throttling. Client ids are chosen by whoever connects: without a bound a flood
# of made-up ids would grow this without end (and each would cost a hub request).
MAX_TRACKED_MISSES = 10_000
# Single-device fetches in flight at once; beyond this a miss is simply a miss until the next sync.
MAX_CONCURRENT_FETCHES = 32


class DeviceDirectory:
    """The in-memory view of the device cache (implements the front door's `DeviceDirectory`)."""

    def __init__(
        self,
        *,
        gateway_id: str,
        repository: CacheRepository,
        db: DatabaseThread,
        clock: Callable[[], datetime],
        snapshot: CacheSnapshot | None = None,
        trust_bundle: Sequence[x509.Certificate] = (),
        offline_trust: timedelta | None = None,
        fetcher: Fetcher | None = None,
        cache_miss_wait: float = 2.0,
        fetch_throttle: float = 30.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        snapshot = snapshot or CacheSnapshot()
        self.gateway_id = gateway_id
        self._repository = repository
        self._db = db
        self._clock = clock
        self._monotonic = monotonic
        self._trust_bundle = tuple(trust_bundle)
        self._offline_trust = offline_trust
        self._fetcher = fetcher
        self._cache_miss_wait = cache_miss_wait
        self._fetch_throttle = fetch_throttle
        self._devices: dict[str, DeviceRecord] = {record.device_id: record for record in snapshot.devices}
        self._cas: tuple[RegisteredCA, ...] = snapshot.cas
        self._anchors = build_anchors(self._trust_bundle, self._cas)
        self._sequence = snapshot.sequence
        self._status = snapshot.status
        self._stale = False  # the tables are behind memory after a failed write
        self._version = 0  # counts changes to the device dict, to detect a change during an off-loop diff
        self._callbacks: list[RevocationCallback] = []
        self._anchor_callbacks: list[AnchorsCallback] = []
        self._inflight: dict[str, asyncio.Task[DeviceRecord | None]] = {}
        self._last_fetch: dict[str, float] = {}

    # -- what the front door asks -------------------------------------------------------------------

    def lookup(self, device_id: str) -> DeviceRecord | None:
        """The cached record; None if unknown, or if the cache is older than `offline_trust` allows."""
        if not self.cache_fresh():
            return None
        return self._devices.get(device_id)

    async def lookup_or_fetch(self, device_id: str) -> DeviceRecord | None:
        """The cached record, or on a miss while the hub is online, one bounded, throttled hub fetch.

        Concurrent misses of one id share a single fetch. A fetch that outlives the wait still lands in
        the cache, so the device's next attempt finds it.
        """
        record = self.lookup(device_id)
        # Ask the hub unless it is known to be down: right after start the first sync may still be
        # running, and a device registered a moment ago must get in on its first try.
        known_offline = not self._status.online and self._status.offline_since is not None
        if record is not None or self._fetcher is None or known_offline:
            return record
        task = self._inflight.get(device_id) or self._start_fetch(device_id)
        if task is None:
            return None
        try:
            return await asyncio.wait_for(asyncio.shield(task), self._cache_miss_wait)
        except TimeoutError:
            log.info("device %s: not in the cache and the hub did not answer within %.1fs",
                     device_id, self._cache_miss_wait)
            return None

    def anchors(self) -> TrustAnchors:
        """The trust anchors: the trust bundle plus every registered CA, root or intermediate."""
        return self._anchors

    def replace_trust_bundle(self, trust_bundle: Sequence[x509.Certificate]) -> None:
        """A new trust bundle (SIGHUP): device chains checked from now on use it."""
        self._trust_bundle = tuple(trust_bundle)
        self._anchors = build_anchors(self._trust_bundle, self._cas)

    def cache_fresh(self) -> bool:
        """False once the last successful sync is older than `offline_trust`."""
        return cache_usable(self._status.last_success_at, self._clock(), self._offline_trust)

    # -- what the sync loop and the status view read ------------------------------------------------

    @property
    def sequence(self) -> int | None:
        """The change-feed cursor the cache is at (None before the first full sync)."""
        return self._sequence

    @property
    def status(self) -> SyncStatus:
        return self._status

    def __len__(self) -> int:
        return len(self._devices)

    def get(self, device_id: str) -> DeviceRecord | None:
        """The cached record regardless of offline trust (for diagnostics)."""
        return self._devices.get(device_id)

    # -- revocation ---------------------------------------------------------------------------------

    def on_revoked(self, callback: RevocationCallback) -> None:
        """Call `callback(device_id, reason_code)` whenever a change ends what a session relied on."""
        self._callbacks.append(callback)

    def on_anchors_changed(self, callback: AnchorsCallback) -> None:
        """Call `callback(old, new, removed_cas)` whenever the registered CAs change (added, replaced, removed)."""
        self._anchor_callbacks.append(callback)

    def _anchors_changed(self, old: TrustAnchors, removed: tuple[RegisteredCA, ...]) -> None:
        for callback in self._anchor_callbacks:
            try:
                callback(old, self._anchors, removed)
            except Exception:
                log.exception("trust anchor callback failed")

    def _revoke(self, device_id: str, reason: RevocationReason) -> None:
        # INFO: most revoked devices are not connected; ending a live session is logged where it happens.
        log.info("revoked device=%s reason=%s: %s", device_id, reason.value, reason.sentence)
        for callback in self._callbacks:
            try:
                callback(device_id, reason.value)
            except Exception:
                log.exception("revocation callback failed for device %s", device_id)

    # -- writes ----------------------------------------------------------------------------------------

    async def apply(self, changes: CacheChanges) -> list[tuple[str, RevocationReason]]:
        """Apply what the hub said to memory (firing revocations) and then to the tables.

        Returns the revocations fired. Raises StorageError if the tables could not follow; memory keeps
        the change and the next write rewrites the tables whole.
        """
        if changes.full:
            upserts, deletes = await self._diff_off_loop(changes.upserts)
        else:
            upserts = [r for r in changes.upserts if self._devices.get(r.device_id) != r]
            deletes = [device_id for device_id in dict.fromkeys(changes.deletes) if device_id in self._devices]
        if upserts or deletes:
            self._version += 1
        revoked: list[tuple[str, RevocationReason]] = []
        for record in upserts:
            reason = revocation_reason(self._devices.get(record.device_id), record, self.gateway_id)
            self._devices[record.device_id] = record
            if reason is not None:
                revoked.append((record.device_id, reason))
        for device_id in deletes:
            reason = revocation_reason(self._devices.pop(device_id), None, self.gateway_id)
            if reason is not None:
                revoked.append((device_id, reason))
        cas = changes.cas if changes.cas is not None and changes.cas != self._cas else None
        if cas is not None:
            old_cas, old_anchors = self._cas, self._anchors
            self._cas = cas
            self._anchors = build_anchors(self._trust_bundle, cas)
            removed = tuple(ca for ca in old_cas if ca not in cas)
            log.info("registered CAs now: %s%s", ", ".join(ca.name for ca in cas) or "none",
                     f" (removed: {', '.join(ca.name for ca in removed)})" if removed else "")
            self._anchors_changed(old_anchors, removed)
        sequence = changes.sequence if changes.sequence != self._sequence else None
        if sequence is not None:
            self._sequence = sequence
        for device_id, reason in revoked:
            self._revoke(device_id, reason)
        if self._stale:
            await self._rewrite(changes.fetched_at)
        elif upserts or deletes or cas is not None or sequence is not None or changes.full:
            try:
                await self._db.run(
                    self._repository.apply,
                    upserts=upserts,
                    deletes=deletes,
                    fetched_at=changes.fetched_at,
                    sequence=sequence,
                    cas=cas,
                    confirm_all=changes.full,
                )
            except StorageError:
                self._stale = True
                raise
        return revoked

    async def _diff_off_loop(self, snapshot: Sequence[DeviceRecord]) -> tuple[list[DeviceRecord], list[str]]:
        # Comparing 100k records takes ~60 ms here and ten times that on a Raspberry Pi: too long to
        # stall every device connection for. Diff a copy on a worker thread; if a single-device fetch
        # changed memory meanwhile, diff again here (rare, and then the result is exact).
        version = self._version
        upserts, deletes = await asyncio.to_thread(diff_snapshot, dict(self._devices), snapshot)
        if version != self._version:
            upserts, deletes = diff_snapshot(self._devices, snapshot)
        return upserts, deletes

    async def _rewrite(self, fetched_at: datetime) -> None:
        await self._db.run(
            self._repository.replace_all, list(self._devices.values()), self._cas, self._sequence, fetched_at
        )
        self._stale = False
        log.info("device cache tables rewritten from memory (%d devices) after an earlier write failure",
                 len(self._devices))

    async def set_status(self, status: SyncStatus) -> None:
        """Record how the last hub contact went (memory at once, then the table); StorageError if not saved."""
        self._status = status
        await self._db.run(self._repository.save_status, status)

    # -- single-device fetches -------------------------------------------------------------------------

    def _start_fetch(self, device_id: str) -> asyncio.Task[DeviceRecord | None] | None:
        now = self._monotonic()
        last = self._last_fetch.get(device_id)
        if last is not None and now - last < self._fetch_throttle:
            return None
        if len(self._inflight) >= MAX_CONCURRENT_FETCHES:
            return None
        if len(self._last_fetch) >= MAX_TRACKED_MISSES:
            self._last_fetch = {k: t for k, t in self._last_fetch.items() if now - t < self._fetch_throttle}
            if len(self._last_fetch) >= MAX_TRACKED_MISSES:
                return None
        self._last_fetch[device_id] = now
        task = asyncio.get_running_loop().create_task(self._fetch(device_id))
        self._inflight[device_id] = task
        return task

    async def _fetch(self, device_id: str) -> DeviceRecord | None:
        assert self._fetcher is not None
        try:
            try:
                fetched = await self._fetcher(device_id)
            except HubError as exc:
                log.info("device %s: not in the cache; fetching it from the hub failed: %s", device_id, exc)
                return None
            if fetched is None or fetched.device_id != device_id:
                return None
            if accept_fetched(fetched, self._devices.get(device_id), self._sequence):
                try:
                    await self.apply(CacheChanges(fetched_at=self._clock(), upserts=(fetched,)))
                except StorageError as exc:
                    log.error("device %s fetched from the hub but not saved: %s", device_id, exc)
                log.info("device %s: fetched from the hub on a cache miss", device_id)
            return self._devices.get(device_id)
        finally:
            self._inflight.pop(device_id, None)

    async def close(self) -> None:
        """Cancel single-device fetches still in flight."""
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

"""DeviceDirectory: memory and tables stay coherent, revocations fire, offline trust, trust anchors, and
the bounded, throttled, shared single-device fetch on a cache miss."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.cache.directory import DeviceDirectory
from gateway.cache.records import CacheChanges, RegisteredCA, SyncStatus
from gateway.cache.repository import CacheRepository
from gateway.db import engine as db
from gateway.db.engine import DatabaseThread, open_engine, upgrade
from gateway.errors import HubUnavailable, StorageError
from gateway.pki import CA
from gateway.records import AuthType, DeviceRecord

GW = "gw1"
T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
A, B = "aa" * 32, "bb" * 32


def dev(name: str, generation: int = 1, **changes: object) -> DeviceRecord:
    return replace(DeviceRecord(name, True, AuthType.SELF_SIGNED, GW, A, None, generation), **changes)  # type: ignore[arg-type]


class Clock:
    def __init__(self) -> None:
        self.now = T0
        self.mono = 1000.0

    def __call__(self) -> datetime:
        return self.now

    def monotonic(self) -> float:
        return self.mono


@dataclass
class FakeHub:
    """The single-device fetch, scripted: answers from `devices`, optionally held until `release` is set."""

    devices: dict[str, DeviceRecord] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    release: asyncio.Event | None = None
    error: Exception | None = None

    async def fetch(self, device_id: str) -> DeviceRecord | None:
        self.calls.append(device_id)
        if self.release is not None:
            await self.release.wait()
        if self.error is not None:
            raise self.error
        return self.devices.get(device_id)


@dataclass
class Setup:
    url: str
    repository: CacheRepository
    db: DatabaseThread
    clock: Clock
    hub: FakeHub

    def directory(self, **kwargs: object) -> DeviceDirectory:
        options: dict[str, object] = {
            "gateway_id": GW,
            "repository": self.repository,
            "db": self.db,
            "clock": self.clock,
            "monotonic": self.clock.monotonic,
            "snapshot": self.repository.load(),
            "fetcher": self.hub.fetch,
            # A fetch answered at once still saves the record (a SQLite commit) before the lookup returns it:
            # 0.5 s could run out on a loaded machine. Tests of the bound set their own, with a held fetch.
            "cache_miss_wait": 30.0,
            "fetch_throttle": 30.0,
        }
        return DeviceDirectory(**(options | kwargs))  # type: ignore[arg-type]


@pytest.fixture
async def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Setup]:
    monkeypatch.setattr(db, "SQLITE_BUSY_TIMEOUT_MS", 100)  # a locked database fails fast in these tests
    url = f"sqlite:///{tmp_path}/edgegate.db"
    upgrade(url)
    engine = open_engine(url)
    worker = DatabaseThread()
    yield Setup(url, CacheRepository(engine), worker, Clock(), FakeHub())
    worker.close()
    engine.dispose()


def table(setup: Setup) -> dict[str, DeviceRecord]:
    return {d.device_id: d for d in setup.repository.load().devices}


def memory(directory: DeviceDirectory, ids: list[str]) -> dict[str, DeviceRecord]:
    return {i: r for i in ids if (r := directory.get(i)) is not None}


# -- apply and revocation --------------------------------------------------------------------------


async def test_full_sync_then_deltas_keep_memory_and_table_coherent(setup: Setup) -> None:
    directory = setup.directory()
    fired: list[tuple[str, str]] = []
    directory.on_revoked(lambda device_id, reason: fired.append((device_id, reason)))
    ids = ["d1", "d2", "d3", "d4", "d5"]

    revoked = await directory.apply(
        CacheChanges(fetched_at=T0, upserts=tuple(dev(i) for i in ids[:4]), sequence=10, full=True)
    )
    assert (revoked, fired, len(directory), directory.sequence) == ([], [], 4, 10)
    assert table(setup) == memory(directory, ids)

    # Deltas: a disable, a removal, a thumbprint rotation that drops A, one that only adds B, a new device.
    await directory.apply(
        CacheChanges(
            fetched_at=T0,
            upserts=(
                dev("d1", 11, enabled=False),
                dev("d3", 12, primary_thumbprint=B),
                dev("d4", 13, secondary_thumbprint=B),
                dev("d5", 14),
            ),
            deletes=("d2", "never-cached"),
            sequence=14,
        )
    )
    assert fired == [("d1", "device_disabled"), ("d3", "thumbprints_changed"), ("d2", "device_removed")]
    assert table(setup) == memory(directory, ids)
    assert directory.sequence == setup.repository.load().sequence == 14

    # A full sync that no longer lists d4 and moves d5 to another gateway.
    fired.clear()
    await directory.apply(
        CacheChanges(
            fetched_at=T0,
            upserts=(dev("d1", 11, enabled=False), dev("d3", 12, primary_thumbprint=B), dev("d5", 15, parent="gw2")),
            sequence=15,
            full=True,
        )
    )
    assert sorted(fired) == [("d4", "device_removed"), ("d5", "device_out_of_scope")]
    assert set(table(setup)) == {"d1", "d3", "d5"} == set(memory(directory, ids))
    assert table(setup) == memory(directory, ids)


async def test_a_failing_callback_does_not_stop_the_others(setup: Setup) -> None:
    directory = setup.directory()
    await directory.apply(CacheChanges(fetched_at=T0, upserts=(dev("d1"),), sequence=1, full=True))
    seen: list[str] = []

    def broken(device_id: str, reason: str) -> None:
        raise RuntimeError("kick failed")

    directory.on_revoked(broken)
    directory.on_revoked(lambda device_id, reason: seen.append(device_id))
    await directory.apply(CacheChanges(fetched_at=T0, deletes=("d1",), sequence=2))
    assert seen == ["d1"]
    assert len(directory) == 0


async def test_restart_loads_what_was_applied(setup: Setup) -> None:
    first = setup.directory()
    ca = CA.create_root("registered root")
    cas = (RegisteredCA("root", ca.cert_pem.bytes.decode(), "00" * 32),)
    await first.apply(CacheChanges(fetched_at=T0, upserts=(dev("d1"), dev("d2")), sequence=7, full=True, cas=cas))
    await first.set_status(SyncStatus(online=True, online_since=T0, last_success_at=T0))
    second = setup.directory()
    assert (len(second), second.sequence, second.get("d2")) == (2, 7, dev("d2"))
    assert second.status.last_success_at == T0
    assert ca.cert in second.anchors().roots


async def test_a_failed_write_keeps_memory_and_the_next_write_rewrites_the_tables(setup: Setup) -> None:
    directory = setup.directory()
    fired: list[str] = []
    directory.on_revoked(lambda device_id, reason: fired.append(device_id))
    await directory.apply(CacheChanges(fetched_at=T0, upserts=(dev("d1"), dev("d2")), sequence=1, full=True))

    path = setup.url.removeprefix("sqlite:///")
    locker = sqlite3.connect(path, timeout=0)
    locker.execute("BEGIN EXCLUSIVE")  # another writer holds the database: our write times out
    try:
        with pytest.raises(StorageError, match="database is locked"):
            await directory.apply(CacheChanges(fetched_at=T0, upserts=(dev("d1", 2, enabled=False),), sequence=2))
    finally:
        locker.rollback()
        locker.close()
    assert fired == ["d1"]  # the revocation did not wait for the disk
    assert directory.get("d1") == dev("d1", 2, enabled=False)
    assert table(setup)["d1"] == dev("d1")  # the table is behind ...

    await directory.apply(CacheChanges(fetched_at=T0, deletes=("d2",), sequence=3))
    assert table(setup) == memory(directory, ["d1", "d2"]) == {"d1": dev("d1", 2, enabled=False)}  # ... caught up
    assert setup.repository.load().sequence == 3


# -- offline trust ---------------------------------------------------------------------------------


async def test_lookup_refuses_a_cache_older_than_offline_trust(setup: Setup) -> None:
    directory = setup.directory(offline_trust=timedelta(hours=1))
    await directory.apply(CacheChanges(fetched_at=T0, upserts=(dev("d1"),), sequence=1, full=True))
    assert directory.lookup("d1") is None  # never confirmed by the hub
    assert not directory.cache_fresh()
    await directory.set_status(SyncStatus(online=True, last_success_at=T0))
    assert directory.lookup("d1") == dev("d1")
    setup.clock.now = T0 + timedelta(hours=1)
    assert directory.lookup("d1") == dev("d1")
    setup.clock.now = T0 + timedelta(hours=1, seconds=1)
    assert directory.lookup("d1") is None
    assert directory.get("d1") == dev("d1")  # still cached: refused, never evicted

    forever = setup.directory(offline_trust=None)
    setup.clock.now = T0 + timedelta(days=3650)
    assert forever.lookup("d1") == dev("d1")


# -- trust anchors ---------------------------------------------------------------------------------


async def test_anchors_are_the_bundle_plus_registered_cas(setup: Setup) -> None:
    bundle = CA.create_root("trust bundle root")
    registered_root = CA.create_root("registered root")
    intermediate = registered_root.create_child_ca("registered intermediate")
    directory = setup.directory(trust_bundle=[bundle.cert])
    assert directory.anchors().roots == (bundle.cert,)
    assert directory.anchors().intermediates == ()

    cas = (
        RegisteredCA("root", registered_root.cert_pem.bytes.decode(), "01" * 32),
        RegisteredCA("inter", intermediate.cert_pem.bytes.decode(), "02" * 32),
        RegisteredCA("broken", "not a certificate", "03" * 32),
        RegisteredCA("bundle-again", bundle.cert_pem.bytes.decode(), "04" * 32),
    )
    await directory.apply(CacheChanges(fetched_at=T0, sequence=1, full=True, cas=cas))
    anchors = directory.anchors()
    # IoT Hub's semantics: a registered intermediate is an anchor in its own right.
    assert anchors.roots == (bundle.cert, registered_root.cert, intermediate.cert)
    assert anchors.intermediates == ()

    await directory.apply(CacheChanges(fetched_at=T0, sequence=2, full=True, cas=()))
    assert directory.anchors().roots == (bundle.cert,)


async def test_a_ca_change_tells_who_listens_what_was_removed(setup: Setup) -> None:
    root = CA.create_root("registered root")
    ca = RegisteredCA("root", root.cert_pem.bytes.decode(), "01" * 32)
    directory = setup.directory()
    told: list[tuple[tuple[object, ...], tuple[object, ...], tuple[RegisteredCA, ...]]] = []
    directory.on_anchors_changed(lambda old, new, removed: told.append((old.roots, new.roots, removed)))
    await directory.apply(CacheChanges(fetched_at=T0, sequence=1, cas=(ca,)))
    await directory.apply(CacheChanges(fetched_at=T0, sequence=2, cas=(ca,)))  # the same list: no news
    await directory.apply(CacheChanges(fetched_at=T0, sequence=3, cas=()))
    assert told == [((), (root.cert,), ()), ((root.cert,), (), (ca,))]
    assert setup.repository.load().cas == ()


# -- cache misses ----------------------------------------------------------------------------------


async def online(directory: DeviceDirectory) -> DeviceDirectory:
    await directory.set_status(SyncStatus(online=True, online_since=T0, last_success_at=T0))
    return directory


async def test_a_hit_never_asks_the_hub_and_offline_misses_do_not_either(setup: Setup) -> None:
    directory = setup.directory()
    await directory.apply(CacheChanges(fetched_at=T0, upserts=(dev("d1"),), sequence=1, full=True))
    setup.hub.devices["d2"] = dev("d2", 2)
    setup.hub.devices["d3"] = dev("d3", 3)
    assert await directory.lookup_or_fetch("d1") == dev("d1")
    assert setup.hub.calls == []
    # Not synced yet, not known to be offline (just started): a device registered a moment ago gets in.
    assert await directory.lookup_or_fetch("d2") == dev("d2", 2)
    assert setup.hub.calls == ["d2"]
    await directory.set_status(SyncStatus(online=False, offline_since=T0))
    assert await directory.lookup_or_fetch("d3") is None  # known offline: no fetch, no wait
    assert setup.hub.calls == ["d2"]


async def test_a_miss_while_online_fetches_once_and_caches_it(setup: Setup) -> None:
    directory = await online(setup.directory())
    await directory.apply(CacheChanges(fetched_at=T0, sequence=5, full=True))
    setup.hub.devices["d9"] = dev("d9", 6)
    assert await directory.lookup_or_fetch("d9") == dev("d9", 6)
    assert directory.lookup("d9") == dev("d9", 6)
    assert table(setup) == {"d9": dev("d9", 6)}
    assert setup.hub.calls == ["d9"]
    assert setup.repository.load().sequence == 5  # a single fetch never moves the cursor


async def test_concurrent_misses_share_one_fetch(setup: Setup) -> None:
    directory = await online(setup.directory())
    setup.hub.devices["d1"] = dev("d1", 3)
    setup.hub.release = asyncio.Event()
    waiters = [asyncio.create_task(directory.lookup_or_fetch("d1")) for _ in range(20)]
    await asyncio.sleep(0.05)
    setup.hub.release.set()
    assert await asyncio.gather(*waiters) == [dev("d1", 3)] * 20
    assert setup.hub.calls == ["d1"]


async def test_the_wait_is_bounded_and_a_late_answer_still_lands(setup: Setup) -> None:
    directory = await online(setup.directory(cache_miss_wait=0.2))
    setup.hub.devices["slow"] = dev("slow", 3)
    setup.hub.release = asyncio.Event()
    loop = asyncio.get_running_loop()
    started = loop.time()
    # The held fetch never answers by itself: only the 0.2 s wait can end the lookup before the 30 s bound.
    assert await asyncio.wait_for(directory.lookup_or_fetch("slow"), 30) is None
    assert loop.time() - started >= 0.2
    setup.hub.release.set()
    # The next attempt joins the fetch still in flight (or finds what it saved): no fixed time for the
    # SQLite commit. A fetch that ended without saving leaves only a throttled miss: None.
    assert await directory.lookup_or_fetch("slow") == dev("slow", 3)
    assert directory.lookup("slow") == dev("slow", 3)
    assert setup.hub.calls == ["slow"]


async def test_misses_are_throttled_per_device(setup: Setup) -> None:
    directory = await online(setup.directory(fetch_throttle=30.0))
    assert await directory.lookup_or_fetch("ghost") is None
    assert await directory.lookup_or_fetch("ghost") is None
    assert await directory.lookup_or_fetch("other") is None
    assert setup.hub.calls == ["ghost", "other"]
    setup.clock.mono += 29.9
    assert await directory.lookup_or_fetch("ghost") is None
    assert setup.hub.calls == ["ghost", "other"]
    setup.clock.mono += 0.2
    setup.hub.devices["ghost"] = dev("ghost", 9)
    assert await directory.lookup_or_fetch("ghost") == dev("ghost", 9)
    assert setup.hub.calls == ["ghost", "other", "ghost"]


@pytest.mark.parametrize(
    ("answer", "error"),
    [(None, None), (None, HubUnavailable("refused")), (dev("someone-else", 9), None)],
    ids=["404", "hub-unavailable", "wrong-device"],
)
async def test_failed_fetches_are_misses(setup: Setup, answer: DeviceRecord | None, error: Exception | None) -> None:
    directory = await online(setup.directory())
    if answer is not None:
        setup.hub.devices["d1"] = answer
    setup.hub.error = error
    assert await directory.lookup_or_fetch("d1") is None
    assert len(directory) == 0


async def test_a_fetch_older_than_the_cursor_is_stale(setup: Setup) -> None:
    directory = await online(setup.directory())
    await directory.apply(CacheChanges(fetched_at=T0, sequence=50, full=True))
    setup.hub.devices["gone"] = dev("gone", 40)  # read before a removal the feed already applied
    assert await directory.lookup_or_fetch("gone") is None
    assert len(directory) == 0


async def test_close_cancels_fetches_in_flight(setup: Setup) -> None:
    directory = await online(setup.directory(cache_miss_wait=0.05))
    setup.hub.release = asyncio.Event()
    assert await directory.lookup_or_fetch("stuck") is None
    await directory.close()
    setup.hub.release.set()
    await asyncio.sleep(0.01)
    assert directory.get("stuck") is None


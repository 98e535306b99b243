"""RegistrySync paths a real hub cannot be made to take on cue: a registry reset seen mid-feed, and a bug in a
sync step. A scripted stand-in for the hub client; the real one is exercised in tests/integration."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.cache.directory import DeviceDirectory
from gateway.cache.repository import CacheRepository
from gateway.db.engine import DatabaseThread, open_engine, upgrade
from gateway.errors import HubUnavailable
from gateway.hub.registry_sync import RegistrySync
from gateway.hub.sync_state import HubState
from gateway.hub.wire import ChangePage, FeedChange, ScopePage
from gateway.records import AuthType, DeviceRecord

GW = "gw1"


def dev(name: str, generation: int) -> DeviceRecord:
    return DeviceRecord(name, True, AuthType.SELF_SIGNED, GW, "aa" * 32, None, generation)


class ScriptedHub:
    """Answers like the hub API; `scope` and `feed` are what the next calls return."""

    url = "https://scripted"

    def __init__(self) -> None:
        self.scope: list[DeviceRecord] = []
        self.sequence = 0
        self.feed: list[ChangePage | Exception] = []
        self.scope_errors: list[Exception] = []
        self.full_reads = 0

    async def scope_page(self, after: str | None, limit: int) -> ScopePage:
        if self.scope_errors:
            raise self.scope_errors.pop(0)
        self.full_reads += 1
        return ScopePage(tuple(self.scope), None, self.sequence)

    async def cas(self) -> tuple[Any, ...]:
        return ()

    async def wait_changes(self, since: int, limit: int, wait: float) -> ChangePage:
        if self.feed:
            answer = self.feed.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer
        await asyncio.sleep(wait)
        return ChangePage((), since, False)

    async def changes(self, since: int, limit: int) -> ChangePage:
        return ChangePage((), since, False)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[tuple[ScriptedHub, DeviceDirectory, RegistrySync]]:
    url = f"sqlite:///{tmp_path}/edgegate.db"
    upgrade(url)
    engine = open_engine(url)
    worker = DatabaseThread()
    directory = DeviceDirectory(gateway_id=GW, repository=CacheRepository(engine), db=worker,
                                clock=lambda: datetime.now(UTC))
    hub = ScriptedHub()
    sync = RegistrySync(directory, hub, clock=lambda: datetime.now(UTC),  # type: ignore[arg-type]
                        long_poll_wait=timedelta(seconds=0.05), backoff_base=0.01, backoff_cap=0.02)
    yield hub, directory, sync
    await sync.stop()
    worker.close()
    engine.dispose()


async def eventually(condition: Any, within: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


async def test_a_reset_feed_triggers_a_full_sync_without_going_offline(
    rig: tuple[ScriptedHub, DeviceDirectory, RegistrySync],
) -> None:
    hub, directory, sync = rig
    hub.scope, hub.sequence = [dev("a", 1), dev("b", 2)], 100
    hub.feed = [ChangePage((FeedChange(101, "a", None),), 101, False)]
    sync.start()
    await eventually(lambda: directory.sequence == 101 and directory.get("a") is None)
    hub.scope, hub.sequence = [dev("c", 3)], 3  # the registry was rebuilt: its sequence went backwards
    hub.feed = [ChangePage((), 101, False, reset=True)]
    await eventually(lambda: directory.sequence == 3)
    assert directory.get("c") == dev("c", 3)
    assert directory.get("b") is None
    assert hub.full_reads == 2
    assert sync.state is HubState.ONLINE
    assert directory.status.offline_since is None  # never offline on the way


async def test_an_unexpected_error_does_not_end_syncing(
    rig: tuple[ScriptedHub, DeviceDirectory, RegistrySync], caplog: pytest.LogCaptureFixture
) -> None:
    hub, directory, sync = rig
    hub.scope, hub.sequence = [dev("a", 1)], 1
    hub.scope_errors = [KeyError("a bug")]
    sync.start()
    await eventually(lambda: sync.state is HubState.ONLINE)
    assert directory.get("a") == dev("a", 1)
    assert "registry sync failed unexpectedly" in caplog.text


async def test_each_change_of_state_is_told_once(rig: tuple[ScriptedHub, DeviceDirectory, RegistrySync]) -> None:
    # The status writer writes status.json when told, so `edgegate status` shows the hub come and go at once.
    hub, _directory, sync = rig
    told: list[HubState] = []
    sync.on_state = told.append
    hub.scope, hub.sequence = [dev("a", 1)], 1
    hub.scope_errors = [HubUnavailable("the hub did not answer")]
    sync.start()
    await eventually(lambda: sync.state is HubState.ONLINE)
    await asyncio.sleep(0.2)  # a few quiet long polls: still online, nothing more to tell
    assert told == [HubState.OFFLINE, HubState.ONLINE]

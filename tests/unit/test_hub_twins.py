"""hub-mock's twins (merge patches, versions, $metadata, each reported patch_id applied once) and its
in-memory device events (cursor, presence, method answers only from the called device)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.records import AuthType
from hub_mock.db import Database, make_engine
from hub_mock.errors import Invalid, NotFound
from hub_mock.methods import GRACE, DeviceEvents, MethodOutcome
from hub_mock.registry import Registry
from hub_mock.twins import TwinStore, check_patch, patch_metadata

T1 = datetime(2027, 1, 15, 8, 0, tzinfo=UTC)
T2 = datetime(2027, 1, 15, 9, 30, tzinfo=UTC)


@pytest.fixture
def twins(tmp_path: Path) -> Iterator[TwinStore]:
    db = Database(make_engine(f"sqlite:///{tmp_path}/hub.db"))
    db.create_tables()
    registry = Registry(db)
    registry.put_gateway("gw", primary_thumbprint="ab" * 32)
    registry.add_device("dev-1", auth_type=AuthType.SELF_SIGNED, parent="gw", primary_thumbprint="cd" * 32)
    yield TwinStore(db, registry)
    db.close()


def test_desired_and_reported_have_their_own_versions_and_metadata(twins: TwinStore) -> None:
    empty = twins.get("dev-1").device_json()
    assert empty == {"desired": {"$version": 1}, "reported": {"$version": 1}}
    twins.set_desired("dev-1", {"interval": 5, "led": {"color": "red", "on": True}}, T1)
    view = twins.set_desired("dev-1", {"led": {"on": None}}, T2)
    assert view.device_json()["desired"] == {"interval": 5, "led": {"color": "red"}, "$version": 3}
    meta = view.full_json()["properties"]["desired"]["$metadata"]
    assert meta["$lastUpdated"] == "2027-01-15T09:30:00Z"
    assert meta["interval"] == {"$lastUpdated": "2027-01-15T08:00:00Z", "$lastUpdatedVersion": 2}
    assert "on" not in meta["led"]
    assert meta["led"]["$lastUpdatedVersion"] == 3
    assert twins.apply_reported("gw", "dev-1", "p1", {"fw": "1"}, T1) == (2, False)
    assert twins.get("dev-1").reported.version == 2
    assert twins.get("dev-1").desired.version == 3


def test_a_reported_patch_id_is_applied_once(twins: TwinStore) -> None:
    assert twins.apply_reported("gw", "dev-1", "p1", {"n": 1}, T1) == (2, False)
    assert twins.apply_reported("gw", "dev-1", "p1", {"n": 1}, T2) == (2, True)
    assert twins.apply_reported("gw", "dev-1", "p2", {"n": 2}, T2) == (3, False)
    assert [p["patch"] for p in twins.reported_patches("dev-1")] == [{"n": 1}, {"n": 2}]


def test_unknown_devices_and_bad_patches_are_refused(twins: TwinStore) -> None:
    with pytest.raises(NotFound):
        twins.get("nobody")
    for bad in ([1], {"$version": 2}, {"a.b": 1}, {"x": {"y z": 1}}, {"big": "x" * 40_000}):
        with pytest.raises(Invalid):
            check_patch(bad, "patch")


def test_metadata_follows_the_patch() -> None:
    meta = patch_metadata({}, {"a": 1, "b": {"c": 2}}, "t1", None)
    assert meta == {"a": {"$lastUpdated": "t1"}, "b": {"c": {"$lastUpdated": "t1"}, "$lastUpdated": "t1"},
                    "$lastUpdated": "t1"}
    assert patch_metadata(meta, {"b": None}, "t2", None) == {"a": {"$lastUpdated": "t1"}, "$lastUpdated": "t2"}


async def test_events_cursor_presence_and_answers() -> None:
    events = DeviceEvents()
    events.add("gw", "dev-1", "desired", {"version": 2, "patch": {}})
    events.add("other-gw", "dev-9", "desired", {"version": 2, "patch": {}})
    assert [e.device_id for e in events.after("gw", 0)] == ["dev-1"]
    assert events.after("gw", events.latest) == []
    assert not events.online("gw", 100.0)
    events.poll_started("gw")
    assert events.online("gw", 100.0)
    events.poll_ended("gw", 100.0)
    assert events.online("gw", 100.0 + GRACE)
    assert not events.online("gw", 100.0 + GRACE + 0.1)
    request_id, future = events.call("gw", "dev-1", "reboot", None, 5)
    assert not events.answer(request_id, "dev-2", MethodOutcome(200, None))  # another device
    assert events.answer(request_id, "dev-1", MethodOutcome(200, {"ok": 1}))
    assert not events.answer(request_id, "dev-1", MethodOutcome(500, None))  # answered already
    assert (await asyncio.wait_for(future, 1)).payload == {"ok": 1}

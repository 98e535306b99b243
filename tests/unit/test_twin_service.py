"""The twin cache, the reported-patch queue, the twin service, the method relay and the router, on a real
database (SQLite, and PostgreSQL when EDGEGATE_TEST_PG_URL is set) with the hub and the broker faked:
the hub by a recorder that can be switched off, the broker by a list of what was delivered."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from sqlalchemy import text

from gateway.db.engine import open_engine, upgrade
from gateway.errors import HubUnavailable
from gateway.metrics import Counters
from gateway.records import InboundMessage, Submission
from gateway.twin.health import HubHealth
from gateway.twin.methods import MethodRelay
from gateway.twin.router import TwinRouter
from gateway.twin.service import TwinService
from gateway.twin.store import TwinStore
from tests.unit.test_cache_repository import database_url  # noqa: F401 - the SQLite/PostgreSQL fixture


class FakeHub:
    """The hub's twin and method calls; `up=False` makes each fail as an unreachable hub does."""

    def __init__(self) -> None:
        self.up = True
        self.reported: list[tuple[str, str, dict[str, Any]]] = []
        self.twins: dict[str, dict[str, Any]] = {}
        self.answers: list[tuple[str, str, int, Any, bool]] = []

    def _check(self) -> None:
        if not self.up:
            raise HubUnavailable("cannot talk to the hub (test)")

    async def get_twin(self, device_id: str) -> dict[str, Any] | None:
        self._check()
        return self.twins.get(device_id, {"desired": {"$version": 1}, "reported": {"$version": 1}})

    async def patch_reported(self, device_id: str, patch_id: str, patch: dict[str, Any]) -> int | None:
        self._check()
        if all(p != patch_id for _d, p, _x in self.reported):
            self.reported.append((device_id, patch_id, patch))
        return 1 + sum(1 for d, _p, _x in self.reported if d == device_id)

    async def method_response(self, request_id: str, device_id: str, status: int, payload: Any,
                              *, delivered: bool = True) -> bool:
        self.answers.append((request_id, device_id, status, payload, delivered))
        return True


class FakeBroker:
    def __init__(self) -> None:
        self.connected: set[str] = set()
        self.sent: list[tuple[str, str, bytes]] = []

    def __call__(self, device_id: str, topic: str, payload: bytes, qos: int) -> bool:
        if device_id not in self.connected:
            return False
        self.sent.append((device_id, topic, payload))
        return True

    def topics(self, device_id: str) -> list[str]:
        return [t for d, t, _p in self.sent if d == device_id]


@pytest.fixture
def url(database_url: str) -> str:  # noqa: F811 - the fixture imported above
    upgrade(database_url)
    return database_url


@pytest.fixture
async def store(url: str) -> AsyncIterator[TwinStore]:
    twins = TwinStore(open_engine(url))
    await twins.open()
    yield twins
    twins.close()


def service(store: TwinStore, hub: FakeHub, broker: FakeBroker) -> TwinService:
    return TwinService(store, hub, broker, HubHealth(0.0), clock=lambda: 1_800_000_000.0)


async def settle(predicate: Any, what: str) -> None:
    for _ in range(1000):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def test_the_reported_queue_keeps_seq_order_overall_and_per_device_across_many_devices(
        store: TwinStore, url: str) -> None:
    # A fleet reconnecting at once queues one patch per device; the views the service reads (the oldest,
    # a device's own, the count) must agree with the whole queue in seq order, also after deliveries
    # and a restart.
    devices = [f"dev-{i}" for i in range(40)]
    for n in range(3):
        for device in devices:
            await store.queue_reported(device, {"n": n}, 0.0)
    everything = store.pending()
    assert [p.seq for p in everything] == sorted(p.seq for p in everything)
    assert store.queued_total == len(everything) == 120
    oldest = store.oldest()
    assert oldest is not None
    assert oldest == everything[0]
    assert [p.patch["n"] for p in store.pending("dev-7")] == [0, 1, 2]
    assert store.queued("dev-7") == 3
    for patch in everything[:45]:  # every device's first, and dev-0..dev-4's second
        await store.delivered(patch, 1)
    assert store.oldest() == everything[45]
    assert store.queued_total == 75
    assert [p.patch["n"] for p in store.pending("dev-3")] == [2]
    assert [p.patch["n"] for p in store.pending("dev-30")] == [1, 2]
    again = TwinStore(open_engine(url))
    await again.open()
    assert [p.seq for p in again.pending()] == [p.seq for p in store.pending()]
    assert again.queued("dev-30") == 2
    again.close()
    for patch in store.pending():
        await store.delivered(patch, 1)
    assert store.oldest() is None
    assert store.queued_total == 0
    assert store.pending("dev-30") == []


async def test_reported_patches_while_the_hub_is_down_are_durable_acknowledged_and_sent_once_in_order(
        store: TwinStore, url: str) -> None:
    hub, broker = FakeHub(), FakeBroker()
    broker.connected.add("dev-1")
    twins = service(store, hub, broker)
    hub.up = False
    twins.health.failed("down for the test", 0.0)
    futures = [twins.reported("dev-1", str(i), json.dumps({"n": i, "k": {"v": i}}).encode()) for i in range(3)]
    await asyncio.gather(*futures)  # durable
    assert [p.patch["n"] for p in store.pending()] == [0, 1, 2]
    await settle(lambda: len(broker.sent) == 3, "three 204s")
    assert broker.topics("dev-1") == [f"$iothub/twin/res/204/?$rid={i}&$version={i + 2}" for i in range(3)]
    cached = store.cached("dev-1")
    assert cached is not None
    assert cached.twin.reported == {"n": 2, "k": {"v": 2}}

    # A restart: a new store on the same database holds the same queue and cache.
    again = TwinStore(open_engine(url))
    await again.open()
    assert [p.patch_id for p in again.pending()] == [p.patch_id for p in store.pending()]
    assert again.cached("dev-1") == cached
    again.close()

    hub.up = True
    flusher = asyncio.get_running_loop().create_task(twins.flush_forever())
    await settle(lambda: not store.pending(), "the queue to drain")
    flusher.cancel()
    assert [p["n"] for _d, _id, p in hub.reported] == [0, 1, 2]
    assert len({patch_id for _d, patch_id, _p in hub.reported}) == 3


async def test_online_a_patch_is_answered_with_the_hubs_version(store: TwinStore) -> None:
    hub, broker = FakeHub(), FakeBroker()
    broker.connected.add("dev-1")
    twins = service(store, hub, broker)
    flusher = asyncio.get_running_loop().create_task(twins.flush_forever())
    hub.reported.append(("dev-1", "earlier", {"old": 1}))  # the hub already had one patch: version 3 next
    await twins.reported("dev-1", "r1", b'{"fw": "1"}')
    await settle(lambda: broker.sent, "the 204")
    flusher.cancel()
    assert broker.topics("dev-1") == ["$iothub/twin/res/204/?$rid=r1&$version=3"]


async def test_get_goes_to_the_hub_then_to_the_cache_and_says_so(store: TwinStore,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "edgegate.twin")
    hub, broker = FakeHub(), FakeBroker()
    broker.connected.add("dev-1")
    twins = service(store, hub, broker)
    hub.twins["dev-1"] = {"desired": {"interval": 5, "$version": 4}, "reported": {"fw": "1", "$version": 2}}
    twins.get("dev-1", "a")
    await settle(lambda: len(broker.sent) == 1 and store.cached("dev-1"), "the online answer")
    online = json.loads(broker.sent[0][2])
    assert online == hub.twins["dev-1"]
    hub.up = False
    twins.get("dev-1", "b")
    await settle(lambda: len(broker.sent) == 2, "the cached answer")
    assert broker.sent[1][1] == "$iothub/twin/res/200/?$rid=b"
    assert json.loads(broker.sent[1][2]) == online
    assert "answered from the cached copy" in caplog.text
    broker.connected.add("never-seen")
    twins.get("never-seen", "d")
    await settle(lambda: broker.topics("never-seen"), "the 503")
    assert broker.topics("never-seen") == ["$iothub/twin/res/503/?$rid=d"]


async def test_a_get_lays_patches_the_hub_lacks_over_its_twin(store: TwinStore) -> None:
    hub, broker = FakeHub(), FakeBroker()
    broker.connected.add("dev-1")
    twins = service(store, hub, broker)
    hub.up = False
    twins.health.failed("down", 0.0)
    await twins.reported("dev-1", "1", b'{"fw": "2"}')
    hub.up = True
    twins.health.worked(0.0)
    twins.get("dev-1", "g")
    await settle(lambda: any("rid=g" in t for t in broker.topics("dev-1")), "the GET answer")
    answer = json.loads(next(p for _d, t, p in broker.sent if "rid=g" in t))
    assert answer["reported"] == {"fw": "2", "$version": 2}


async def test_a_bad_patch_is_refused_with_400_and_nothing_is_queued(store: TwinStore) -> None:
    hub, broker = FakeHub(), FakeBroker()
    broker.connected.add("dev-1")
    twins = service(store, hub, broker)
    await twins.reported("dev-1", "x", b"[1, 2]")
    assert broker.topics("dev-1") == ["$iothub/twin/res/400/?$rid=x"]
    assert store.pending() == []


async def test_a_failed_commit_is_not_acknowledged(store: TwinStore) -> None:
    hub, broker = FakeHub(), FakeBroker()
    broker.connected.add("dev-1")
    twins = service(store, hub, broker)
    with store.engine.begin() as conn:
        conn.execute(text("ALTER TABLE twin_reported_queue RENAME TO twin_reported_queue_gone"))
    durable = twins.reported("dev-1", "x", b'{"fw": "3"}')
    with pytest.raises(Exception, match="queueing a reported patch"):
        await durable
    assert store.cached("dev-1") is None  # the cache does not claim what was not stored
    assert broker.sent == []


async def test_desired_patches_update_the_cache_whether_or_not_the_device_listens(store: TwinStore) -> None:
    hub, broker = FakeHub(), FakeBroker()
    broker.connected.add("dev-1")
    twins = service(store, hub, broker)
    twins.get("dev-1", "a")
    await settle(lambda: store.cached("dev-1"), "the cache")
    broker.connected.clear()
    await twins.on_desired("dev-1", 2, {"interval": 9})
    await twins.on_desired("dev-1", 2, {"interval": 1})  # the same version again changes nothing
    cached = store.cached("dev-1")
    assert cached is not None
    assert (cached.twin.desired, cached.twin.desired_version) == ({"interval": 9}, 2)
    broker.connected.add("dev-1")
    await twins.on_desired("dev-1", 3, {"mode": "eco"})
    assert broker.sent[-1][1:] == ("$iothub/twin/PATCH/properties/desired/?$version=3",
                                   b'{"mode":"eco","$version":3}')


async def test_method_calls_reach_only_their_device_and_answers_only_from_it() -> None:
    hub, broker = FakeHub(), FakeBroker()
    relay = MethodRelay(hub, broker)
    await relay.on_call("dev-1", "req1", "reboot", {"a": 1}, 5)
    assert hub.answers[-1][2:] == (404, hub.answers[-1][3], False)  # not connected: 404 at once
    broker.connected.add("dev-1")
    await relay.on_call("dev-1", "req2", "reboot", {"a": 1}, 5)
    assert broker.sent == [("dev-1", "$iothub/methods/POST/reboot/?$rid=req2", b'{"a":1}')]
    relay.respond("dev-2", "req2", 500, b'{"hijack": 1}')  # another device's rid: dropped
    relay.respond("dev-1", "req2", 200, b'{"ok": 1}')
    relay.respond("dev-1", "req2", 201, b'{"again": 1}')  # answered already: dropped
    await asyncio.sleep(0.05)
    assert [a for a in hub.answers if a[0] == "req2"] == [("req2", "dev-1", 200, {"ok": 1}, True)]
    await relay.on_call("dev-1", "req3", "bad/name", None, 5)
    assert hub.answers[-1][2] == 400


class FakeOutbox:
    def __init__(self, room: int | None = None) -> None:
        self.messages: list[InboundMessage] = []
        self.room = room

    def submit(self, message: InboundMessage) -> asyncio.Future[None]:
        self.messages.append(message)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    def submit_many(self, messages: Sequence[InboundMessage]) -> Submission:
        """Takes at most `room` messages (all, when None), like an outbox at its bound."""
        taken = list(messages) if self.room is None else list(messages)[:self.room]
        if self.room is not None:
            self.room -= len(taken)
        self.messages.extend(taken)
        if not taken:
            return Submission(None, 0, "full (test)")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return Submission(done, len(taken), None if len(taken) == len(messages) else "full (test)")


def inbound(kind: str, topic: str, payload: bytes = b"", *, retain: bool = False) -> InboundMessage:
    return InboundMessage("dev-1", kind, topic, payload, 1, (("a", "1"),), 0.0, retain=retain)


async def test_router_sends_only_telemetry_to_the_outbox_and_carries_retain_as_a_property(store: TwinStore) -> None:
    hub, broker, outbox = FakeHub(), FakeBroker(), FakeOutbox()
    broker.connected.add("dev-1")
    twins = service(store, hub, broker)
    router = TwinRouter(outbox, twins, MethodRelay(hub, broker), Counters())
    await router.submit(inbound("telemetry", "devices/dev-1/messages/events/a=1", b"t1"))
    await router.submit(inbound("telemetry", "devices/dev-1/messages/events/a=1", b"t2", retain=True))
    await router.submit(inbound("twin_get", "$iothub/twin/GET/?$rid=1"))
    await router.submit(inbound("twin_reported", "$iothub/twin/PATCH/properties/reported/?$rid=2", b'{"x": 1}'))
    await router.submit(inbound("method_response", "$iothub/methods/res/200/?$rid=zz", b"{}"))
    assert [m.payload for m in outbox.messages] == [b"t1", b"t2"]
    assert outbox.messages[0].properties == (("a", "1"),)
    assert outbox.messages[1].properties == (("a", "1"), ("mqtt-retain", "true"))
    assert [p.patch for p in store.pending()] == [{"x": 1}]


async def test_router_batches_keep_their_order_and_stop_where_the_outbox_stops(store: TwinStore) -> None:
    hub, broker, outbox = FakeHub(), FakeBroker(), FakeOutbox(room=2)
    broker.connected.add("dev-1")
    router = TwinRouter(outbox, service(store, hub, broker), MethodRelay(hub, broker), Counters())
    plain = [inbound("telemetry", "devices/dev-1/messages/events/", b"p%d" % i) for i in range(2)]
    all_telemetry = router.submit_many(plain)
    assert all_telemetry.accepted == 2
    await all_telemetry.committed  # type: ignore[misc]
    outbox.room = 2
    mixed = [inbound("telemetry", "devices/dev-1/messages/events/", b"t1"),
             inbound("twin_reported", "$iothub/twin/PATCH/properties/reported/?$rid=7", b'{"x": 2}'),
             inbound("telemetry", "devices/dev-1/messages/events/", b"t2", retain=True),
             inbound("telemetry", "devices/dev-1/messages/events/", b"t3"),
             inbound("twin_get", "$iothub/twin/GET/?$rid=8")]
    taken = router.submit_many(mixed)
    assert (taken.accepted, taken.refusal) == (3, "full (test)")  # t1, the patch, t2; t3 refused, GET not routed
    await taken.committed  # type: ignore[misc]
    assert [m.payload for m in outbox.messages] == [b"p0", b"p1", b"t1", b"t2"]
    assert outbox.messages[-1].properties[-1] == ("mqtt-retain", "true")
    assert [p.patch for p in store.pending()] == [{"x": 2}]
    await asyncio.sleep(0.05)
    assert not any("rid=8" in topic for topic in broker.topics("dev-1"))  # the GET after the refusal never ran


async def test_the_reported_queue_is_bounded_per_device_and_in_bytes(store: TwinStore,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("gateway.twin.service.MAX_QUEUED_PER_DEVICE", 2)
    monkeypatch.setattr("gateway.twin.service.MAX_QUEUED_BYTES", 100)
    hub, broker = FakeHub(), FakeBroker()
    broker.connected.update({"dev-1", "dev-2"})
    twins = service(store, hub, broker)
    hub.up = False
    twins.health.failed("down", 0.0)
    for i in range(3):
        await twins.reported("dev-1", f"a{i}", b'{"n": 1}')
    assert broker.topics("dev-1")[-1] == "$iothub/twin/res/429/?$rid=a2"
    assert store.queued("dev-1") == 2
    await twins.reported("dev-2", "big", json.dumps({"x": "y" * 100}).encode())
    assert broker.topics("dev-2") == ["$iothub/twin/res/429/?$rid=big"]
    assert store.queued("dev-2") == 0
    assert store.queued_bytes == 2 * len('{"n":1}')


async def test_twin_gets_in_flight_per_device_are_bounded(store: TwinStore) -> None:
    gate = asyncio.Event()

    class SlowHub(FakeHub):
        async def get_twin(self, device_id: str) -> dict[str, Any] | None:
            await gate.wait()
            return await super().get_twin(device_id)

    hub, broker = SlowHub(), FakeBroker()
    broker.connected.add("dev-1")
    twins = service(store, hub, broker)
    for i in range(5):
        twins.get("dev-1", str(i))
    assert broker.topics("dev-1") == ["$iothub/twin/res/429/?$rid=4"]
    gate.set()
    await settle(lambda: len(broker.sent) == 5, "the four answers")
    assert sorted(broker.topics("dev-1"))[:4] == [f"$iothub/twin/res/200/?$rid={i}" for i in range(4)]


async def test_a_gap_in_desired_versions_refreshes_the_cached_twin_from_the_hub(store: TwinStore) -> None:
    hub, broker = FakeHub(), FakeBroker()
    broker.connected.add("dev-1")
    twins = service(store, hub, broker)
    twins.get("dev-1", "a")
    await settle(lambda: store.cached("dev-1"), "the cache")
    # v2 and v3 happened while the gateway was not listening; v4 arrives.
    hub.twins["dev-1"] = {"desired": {"a": 2, "b": 3, "c": 4, "$version": 4}, "reported": {"$version": 1}}
    await twins.on_desired("dev-1", 4, {"c": 4})
    cached = store.cached("dev-1")
    assert cached is not None
    assert (cached.twin.desired, cached.twin.desired_version) == ({"a": 2, "b": 3, "c": 4}, 4)


async def test_a_retry_wait_ends_when_another_caller_finds_the_hub_back() -> None:
    health = HubHealth(0.0)
    health.failed("down", 1.0)
    assert (health.up, health.since) == (False, 1.0)
    waiting = asyncio.get_running_loop().create_task(health.wait_back(3600))
    await asyncio.sleep(0)
    assert not waiting.done()
    health.worked(2.0)
    await asyncio.wait_for(waiting, 30)  # not the hour: woken by worked()
    assert (health.up, health.since) == (True, 2.0)

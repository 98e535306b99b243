"""Store-and-forward against a real hub-mock process over real mutual TLS: outages in the middle of a
stream (hub down, 503, blackholed) lose nothing and duplicate nothing at the hub, per-device order holds;
a crash between the hub's 2xx and the removal record only causes a resend the hub drops; a poison message
goes to the dead-letter table while everything else flows; a hub that refuses us, a hub we cannot trust
and a hub with the wrong name all keep every message. Dead letters on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from gateway.db.engine import open_engine, upgrade
from gateway.hub.client import HubClient
from gateway.metrics import Counters
from gateway.outbox.bounds import OutboxLimits
from gateway.outbox.dead_letters import DeadLetters
from gateway.outbox.store import Outbox
from gateway.pki import CA, self_signed_device_cert
from gateway.records import InboundMessage
from gateway.upstream.forwarder import Forwarder, ForwarderState
from tests.hubproc import HubProcess
from tests.unit.test_cache_repository import database_url  # noqa: F401 - the SQLite/PostgreSQL fixture

pytestmark = pytest.mark.integration

HOSTNAME = "hub.local"
# Short back-off keeps outage tests in seconds; production defaults are in forwarder.py. The request
# timeout is the hub client's default: each request's deadline includes its TLS handshake, and 1 s can run
# out on a loaded machine, turning a certificate error or a refusal into a timeout in `last_error`.
FAST = {"backoff_base": 0.05, "backoff_cap": 0.3, "request_timeout": 10.0, "batch": 50}


@dataclass
class Identity:
    gateway_id: str
    cert: Path
    key: Path
    pem: str


def new_identity(directory: Path) -> Identity:
    gateway_id = f"gw-{uuid.uuid4().hex[:8]}"
    issued = self_signed_device_cert(gateway_id)
    directory.mkdir(parents=True, exist_ok=True)
    cert = issued.fullchain_pem().write_to_path(directory / f"{gateway_id}.pem")
    key = issued.private_key_pem.write_to_path(directory / f"{gateway_id}.key", private=True)
    return Identity(gateway_id, cert, key, issued.cert_pem.bytes.decode())


async def wait_until(condition: Callable[[], bool], within: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"{what} not met within {within}s"
        await asyncio.sleep(0.02)


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProcess]:
    with HubProcess.start(tmp_path_factory.mktemp("hub") / "hub", hostname=HOSTNAME) as process:
        yield process


@pytest.fixture
def clear_faults(hub: HubProcess) -> Iterator[None]:
    yield
    hub.admin.fault("clear")


@dataclass
class Side:
    """One gateway's store-and-forward half: its identity, database, outbox and forwarder."""

    hub: HubProcess
    identity: Identity
    engine: Engine
    outbox: Outbox
    forwarder: Forwarder
    task: asyncio.Task[None] | None = None

    def devices(self, n: int) -> list[str]:
        return [f"{self.identity.gateway_id}-sensor-{i}" for i in range(n)]

    async def submit(self, devices: list[str], start: int, count: int) -> None:
        """Messages start..start+count-1 of every device, interleaved, all committed."""
        futures = [
            self.outbox.submit(InboundMessage(d, "telemetry", f"devices/{d}/messages/events/", str(n).encode(), 1,
                                              (("n", str(n)),), time.time()))
            for n in range(start, start + count) for d in devices
        ]
        await asyncio.gather(*futures)

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self.forwarder.run())

    async def at_hub(self, device: str) -> list[dict[str, Any]]:
        page = await asyncio.to_thread(self.hub.admin.messages, device, limit=10_000)
        return list(page["messages"])

    async def count_at_hub(self, devices: list[str]) -> int:
        return sum([len(await self.at_hub(d)) for d in devices])

    async def assert_exactly_once_in_order(self, devices: list[str], count: int) -> None:
        for device in devices:
            messages = await self.at_hub(device)
            numbers = [int(base64.b64decode(m["payload_b64"])) for m in messages]
            assert numbers == list(range(count)), f"{device}: {numbers[:20]}..."
            assert [m["properties"] for m in messages[:2]] == [{"n": "0"}, {"n": "1"}]
            assert len({m["message_id"] for m in messages}) == count


@pytest.fixture
async def sides(hub: HubProcess, tmp_path: Path,
                database_url: str) -> AsyncIterator[Callable[..., Awaitable[Side]]]:  # noqa: F811
    made: list[Side] = []

    async def make(*, register: bool = True, trust_root: Path | None = None, hostname: str = HOSTNAME,
                   wrap: Callable[[HubClient, Engine], Any] | None = None,
                   request_timeout: float | None = None) -> Side:
        identity = new_identity(tmp_path / "ids")
        # Unregistered: the hub's TLS layer still trusts the cert (registered for a decoy gateway id), so
        # the hub answers 401 unknown_gateway instead of dropping the handshake.
        registered_as = identity.gateway_id if register else f"{identity.gateway_id}-decoy"
        await asyncio.to_thread(hub.admin.add_gateway, registered_as, cert_pem=identity.pem)
        upgrade(database_url)
        engine = open_engine(database_url)
        outbox = Outbox(tmp_path / f"outbox-{identity.gateway_id}", OutboxLimits(), counters=Counters(),
                        dead_letters=DeadLetters(engine), commit_interval=0.005)
        await outbox.open()
        options: dict[str, Any] = dict(FAST)
        if request_timeout is not None:
            options["request_timeout"] = request_timeout
        client = HubClient.from_files(
            url=hub.api_url, hostname=hostname, gateway_id=identity.gateway_id,
            trust_bundle_cert=trust_root or hub.hub_root, identity_cert=identity.cert,
            identity_pk=identity.key, request_timeout=options.pop("request_timeout"),
        )
        forwarder = Forwarder(outbox, client if wrap is None else wrap(client, engine), **options)
        side = Side(hub, identity, engine, outbox, forwarder)
        made.append(side)
        return side

    yield make
    for side in made:
        if side.task is not None:
            side.task.cancel()
            await asyncio.gather(side.task, return_exceptions=True)
        await side.forwarder.uplink.close()  # the hub client (or its test wrapper) belongs to the test
        await side.outbox.close()
        side.engine.dispose()


# -- the hub goes away in the middle of a stream ------------------------------------------------------


async def test_hub_down_mid_stream_every_message_arrives_once_in_order(
    sides: Callable[..., Awaitable[Side]], hub: HubProcess, clear_faults: None
) -> None:
    side = await sides()
    devices = side.devices(3)
    side.start()
    await side.submit(devices, 0, 100)
    await wait_until(lambda: side.outbox.messages == 0, what="first third forwarded")
    assert side.forwarder.status()["state"] == "connected"

    await asyncio.to_thread(hub.admin.fault, "down")
    await side.submit(devices, 100, 100)
    await wait_until(lambda: side.forwarder.state is ForwarderState.RETRYING, what="forwarder retrying")
    await asyncio.sleep(0.5)  # a few failed attempts: nothing may leave the outbox meanwhile
    status = side.forwarder.status()
    assert status["queue"]["messages"] == 300
    assert status["last_error"]
    assert await side.count_at_hub(devices) == 300

    await asyncio.to_thread(hub.admin.fault, "up")
    await side.submit(devices, 200, 100)  # more arrive while the backlog drains
    await wait_until(lambda: side.outbox.messages == 0, what="backlog drained")
    await side.assert_exactly_once_in_order(devices, 300)
    assert side.forwarder.state is ForwarderState.CONNECTED
    assert side.forwarder.forwarded == 900


@pytest.mark.parametrize(("fault", "value"), [("error", 503), ("blackhole", None)])
async def test_failing_or_silent_hub_keeps_everything_until_it_recovers(
    sides: Callable[..., Awaitable[Side]], hub: HubProcess, clear_faults: None, fault: str, value: int | None
) -> None:
    # A silent hub is only noticed by the request timeout: a short one here, where a timeout is the point.
    side = await sides(request_timeout=3.0 if fault == "blackhole" else None)
    devices = side.devices(3)
    await asyncio.to_thread(hub.admin.fault, fault, value)
    side.start()
    await side.submit(devices, 0, 40)
    await wait_until(lambda: side.forwarder.state is ForwarderState.RETRYING, what="forwarder retrying")
    assert side.outbox.messages == 120
    await asyncio.to_thread(hub.admin.fault, "clear")
    await wait_until(lambda: side.outbox.messages == 0, what="backlog drained")
    await side.assert_exactly_once_in_order(devices, 40)


# -- at least once here, exactly once at the hub ----------------------------------------------------------


class SnapshotAfterFirstPost:
    """The real hub client; right after the hub's first 2xx it copies the outbox directory: what a crash
    at that moment (before the removal record reached the disk) leaves behind."""

    def __init__(self, client: HubClient, directory: Path, snapshot: Path) -> None:
        self.client, self.directory, self.snapshot = client, directory, snapshot
        self.posted: list[str] = []

    async def post_messages(self, body: bytes) -> None:
        await self.client.post_messages(body)
        self.posted += [m["message_id"] for m in json.loads(body)["messages"]]
        if not self.snapshot.exists():
            shutil.copytree(self.directory, self.snapshot)

    async def close(self) -> None:
        await self.client.close()


async def test_a_crash_between_the_hubs_2xx_and_the_removal_resends_and_the_hub_keeps_one_copy(
    sides: Callable[..., Awaitable[Side]], tmp_path: Path
) -> None:
    snapshot = tmp_path / "after-crash"
    uplinks: list[SnapshotAfterFirstPost] = []

    def wrap(client: HubClient, _engine: Engine) -> SnapshotAfterFirstPost:
        uplinks.append(SnapshotAfterFirstPost(client, Path(), snapshot))
        return uplinks[-1]

    side = await sides(wrap=wrap)
    uplinks[0].directory = side.outbox.directory
    devices = side.devices(3)
    await side.submit(devices, 0, 100)
    side.start()
    await wait_until(lambda: side.outbox.messages == 0, what="drained")
    assert snapshot.exists()

    restarted = Outbox(snapshot, OutboxLimits(), commit_interval=0.005)
    await restarted.open()
    try:
        assert restarted.messages > 0  # the first batch is still there: its removal never reached the disk
        again = Forwarder(restarted, side.forwarder.uplink, **{k: v for k, v in FAST.items() if k != "request_timeout"})
        task = asyncio.get_running_loop().create_task(again.run())
        await wait_until(lambda: restarted.messages == 0, what="resent after the crash")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    finally:
        await restarted.close()
    assert len(uplinks[0].posted) > len(set(uplinks[0].posted)) == 300  # some were sent twice ...
    await side.assert_exactly_once_in_order(devices, 100)  # ... and stored once


# -- a poison message -------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 413, 422])
async def test_a_poison_message_is_dead_lettered_and_everything_else_arrives_in_order(
    sides: Callable[..., Awaitable[Side]], hub: HubProcess, clear_faults: None, status: int
) -> None:
    side = await sides()
    devices = side.devices(2)
    await asyncio.to_thread(hub.admin.fault, "poison", status)
    futures = []
    for n in range(80):
        for d in devices:
            payload = b"POISON 37" if (d, n) == (devices[0], 37) else str(n).encode()
            futures.append(side.outbox.submit(InboundMessage(d, "telemetry", f"devices/{d}/messages/events/",
                                                             payload, 1, (), time.time())))
    await asyncio.gather(*futures)
    side.start()
    await wait_until(lambda: side.outbox.messages == 0, what="everything but the poison delivered")
    assert side.forwarder.status()["state"] == "connected"
    assert side.forwarder.dead_lettered == 1
    for d in devices:
        numbers = [int(base64.b64decode(m["payload_b64"])) for m in await side.at_hub(d)]
        assert numbers == [n for n in range(80) if (d, n) != (devices[0], 37)], d
    assert side.outbox.dead_letters is not None
    (dead,) = await asyncio.to_thread(side.outbox.dead_letters.entries)
    assert (dead.device_id, dead.payload, dead.status, dead.reason) == (devices[0], b"POISON 37", status,
                                                                         "poison_message")
    assert "contains POISON" in dead.detail
    assert side.outbox.status()["dead_letters"] == 1

    # The hub is fixed; the operator re-queues it (`edgegate outbox requeue`): it arrives, with its first id.
    await asyncio.to_thread(hub.admin.fault, "clear")
    await asyncio.to_thread(side.outbox.dead_letters.flag_requeue, None)
    assert await side.outbox.refresh_dead_letters() == 1
    await wait_until(lambda: side.outbox.messages == 0, what="re-queued dead letter delivered")
    stored = await side.at_hub(devices[0])
    assert base64.b64decode(stored[-1]["payload_b64"]) == b"POISON 37"
    assert stored[-1]["message_id"] == dead.message_id


async def test_a_hub_that_refuses_everything_for_good_dead_letters_nothing(
    sides: Callable[..., Awaitable[Side]], hub: HubProcess, clear_faults: None
) -> None:
    side = await sides()
    devices = side.devices(2)
    await asyncio.to_thread(hub.admin.fault, "error", 400)  # a broken hub, not a poison message
    await side.submit(devices, 0, 20)
    side.start()
    await wait_until(lambda: side.forwarder.state is ForwarderState.RETRYING, what="forwarder retrying")
    await asyncio.sleep(0.5)
    assert side.forwarder.dead_lettered == 0
    assert side.outbox.messages == 40
    assert "nothing is dead-lettered while it accepts none" in str(side.forwarder.last_error)
    await asyncio.to_thread(hub.admin.fault, "clear")  # maybe in the middle of a narrowing
    await wait_until(lambda: side.outbox.messages == 0, what="drained")
    assert side.forwarder.dead_lettered == 0
    for device in devices:  # every one exactly once (a message refused just before the fault cleared is
        numbers = sorted(int(base64.b64decode(m["payload_b64"])) for m in await side.at_hub(device))
        assert numbers == list(range(20))  # confirmed alone afterwards, so it may come after later ones)


async def test_a_poison_message_alone_in_its_post_is_dead_lettered_once_the_next_one_goes_through(
    sides: Callable[..., Awaitable[Side]], hub: HubProcess, clear_faults: None
) -> None:
    side = await sides()
    side.forwarder.batch_bytes = 1000  # the big poison goes alone
    (device,) = side.devices(1)
    await asyncio.to_thread(hub.admin.fault, "poison", 413)
    poison = b"POISON" + b"x" * 5000
    for payload in (poison, b"1", b"2"):
        await side.outbox.submit(InboundMessage(device, "telemetry", f"devices/{device}/messages/events/", payload, 1,
                                                (), time.time()))
    side.start()
    await wait_until(lambda: side.outbox.messages == 0, what="drained")
    assert [base64.b64decode(m["payload_b64"]) for m in await side.at_hub(device)] == [b"1", b"2"]
    assert side.forwarder.dead_lettered == 1


async def test_5xx_is_not_a_dead_letter(sides: Callable[..., Awaitable[Side]], hub: HubProcess,
                                        clear_faults: None) -> None:
    side = await sides()
    devices = side.devices(1)
    await asyncio.to_thread(hub.admin.fault, "error", 500)
    side.start()
    await side.submit(devices, 0, 10)
    await wait_until(lambda: side.forwarder.state is ForwarderState.RETRYING, what="forwarder retrying")
    await asyncio.sleep(0.3)
    assert side.forwarder.dead_lettered == 0
    assert side.outbox.messages == 10
    await asyncio.to_thread(hub.admin.fault, "clear")
    await wait_until(lambda: side.outbox.messages == 0, what="drained")
    await side.assert_exactly_once_in_order(devices, 10)


class CountingUplink:
    """The real hub client, counting the messages of each POST."""

    def __init__(self, client: HubClient, _engine: Engine) -> None:
        self.client = client
        self.posts: list[int] = []

    async def post_messages(self, body: bytes) -> None:
        await self.client.post_messages(body)
        self.posts.append(len(json.loads(body)["messages"]))

    async def close(self) -> None:
        await self.client.close()


async def test_big_messages_go_in_smaller_posts(sides: Callable[..., Awaitable[Side]]) -> None:
    uplinks: list[CountingUplink] = []
    side = await sides(wrap=lambda client, engine: uplinks.append(CountingUplink(client, engine)) or uplinks[-1])
    side.forwarder.batch_bytes = 600_000  # two messages of 256 KiB per POST
    (device,) = side.devices(1)
    big = [InboundMessage(device, "telemetry", f"devices/{device}/messages/events/", bytes([n]) * 256 * 1024, 1, (),
                          time.time()) for n in range(5)]
    await asyncio.gather(*(side.outbox.submit(m) for m in big))
    side.start()
    await wait_until(lambda: side.outbox.messages == 0, what="drained")
    assert uplinks[0].posts == [2, 2, 1]
    stored = await side.at_hub(device)
    assert [base64.b64decode(m["payload_b64"])[:1] for m in stored] == [bytes([n]) for n in range(5)]


# -- low latency when online ------------------------------------------------------------------------------


async def test_an_idle_forwarder_sends_a_new_message_at_once(sides: Callable[..., Awaitable[Side]]) -> None:
    side = await sides()
    # "At once" is told apart from the waits it could wrongly take, not timed (a loaded machine takes its
    # time): the idle recheck (60 s) and a linger made 120 s, which a full POST (one message) never takes.
    side.forwarder.batch, side.forwarder.linger = 1, 120.0
    (device,) = side.devices(1)
    side.start()
    await side.submit([device], 0, 1)
    await wait_until(lambda: side.outbox.messages == 0, what="first message")
    await asyncio.sleep(0.3)  # the forwarder is idle, waiting for a commit
    await side.submit([device], 1, 1)
    await wait_until(lambda: side.outbox.messages == 0, within=30.0, what="second message")
    assert len(await side.at_hub(device)) == 2


# -- the hub refuses us, or is not the hub ----------------------------------------------------------------


async def test_a_hub_that_refuses_our_identity_keeps_everything_until_we_are_registered(
    sides: Callable[..., Awaitable[Side]], hub: HubProcess, caplog: pytest.LogCaptureFixture
) -> None:
    side = await sides(register=False)
    devices = side.devices(2)
    await side.submit(devices, 0, 30)
    side.start()
    await wait_until(lambda: side.forwarder.state is ForwarderState.REJECTED, what="forwarder rejected")
    status = side.forwarder.status()
    assert "401 unknown_gateway" in status["last_error"]
    assert status["queue"]["messages"] == 60
    assert any(r.levelname == "ERROR" and "REFUSES THIS GATEWAY" in r.getMessage() for r in caplog.records)
    assert await side.count_at_hub(devices) == 0

    await asyncio.to_thread(hub.admin.add_gateway, side.identity.gateway_id, cert_pem=side.identity.pem)
    await wait_until(lambda: side.outbox.messages == 0, what="drained once registered")
    await side.assert_exactly_once_in_order(devices, 30)


@pytest.mark.parametrize("mismatch", ["untrusted root", "wrong hostname"])
async def test_a_hub_we_cannot_verify_gets_nothing(sides: Callable[..., Awaitable[Side]], tmp_path: Path,
                                                   mismatch: str) -> None:
    if mismatch == "untrusted root":
        other = CA.create_root("not the hub's root").cert_pem.write_to_path(tmp_path / "other-root.pem")
        side = await sides(trust_root=other)
    else:
        side = await sides(hostname="not-the-hub.local")
    devices = side.devices(2)
    await side.submit(devices, 0, 10)
    side.start()
    await wait_until(lambda: side.forwarder.state is ForwarderState.RETRYING, what="forwarder retrying")
    assert "certificate" in str(side.forwarder.last_error)
    assert side.outbox.messages == 20
    assert await side.count_at_hub(devices) == 0


async def test_the_positive_control_for_the_tls_checks_delivers(sides: Callable[..., Awaitable[Side]]) -> None:
    side = await sides()  # the same set-up as above with the right root and name
    devices = side.devices(2)
    await side.submit(devices, 0, 10)
    side.start()
    await wait_until(lambda: side.outbox.messages == 0, what="drained")
    await side.assert_exactly_once_in_order(devices, 10)

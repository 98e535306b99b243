"""Registry sync against a real hub-mock process over real mutual TLS: full sync of the device scope,
revocations through the long-poll change feed, outages (hub killed, refused, blackholed) that never evict,
a restart with the hub down served from the persisted cache, and both ways the hub can be untrustworthy
or refuse us."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.cache.directory import DeviceDirectory
from gateway.cache.repository import CacheRepository
from gateway.db.engine import DatabaseThread, open_engine, upgrade
from gateway.errors import HubRejected, HubUnavailable
from gateway.hub.client import DEFAULT_CONNECT_TIMEOUT, HubClient
from gateway.hub.registry_sync import RegistrySync
from gateway.hub.sync_state import HubState
from gateway.pki import CA, self_signed_device_cert
from gateway.records import AuthType
from tests.chaos.control import ProxyProcess
from tests.hubproc import HubProcess
from tests.unit.test_cache_repository import database_url  # noqa: F401 - the SQLite/PostgreSQL fixture

pytestmark = pytest.mark.integration

HOSTNAME = "hub.local"
THUMB_A, THUMB_B = "aa" * 32, "bb" * 32
# A short long poll keeps outage tests in seconds; production defaults are in RegistrySync and HubClient.
# The request timeout is the hub client's default: a request's deadline includes its TLS handshake, and 1 s
# can run out on a loaded machine, turning the error a test reads (a hostname mismatch, a refusal) into a
# timeout, or a REJECTED gateway into an OFFLINE one and back (a second "REFUSED" line).
REQUEST_TIMEOUT = 10.0
LONG_POLL = timedelta(seconds=2)


def utcnow() -> datetime:
    return datetime.now(UTC)


async def wait_until(condition: Callable[[], bool], within: float = 60.0, what: str = "condition") -> float:
    """Poll `condition` until true; returns how long it took. The bound only costs time when the condition
    never comes: a loaded machine can stretch a sync with its TLS handshakes past a few seconds."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while not condition():
        assert loop.time() - started < within, f"{what} not met within {within}s"
        await asyncio.sleep(0.01)
    return loop.time() - started


@dataclass
class Identity:
    gateway_id: str
    cert: Path
    key: Path


def new_identity(hub: HubProcess, directory: Path, prefix: str, *, register: bool = True) -> Identity:
    gateway_id = f"{prefix}-{uuid.uuid4().hex[:8]}"
    issued = self_signed_device_cert(gateway_id)
    directory.mkdir(parents=True, exist_ok=True)
    cert = issued.fullchain_pem().write_to_path(directory / f"{gateway_id}.pem")
    key = issued.private_key_pem.write_to_path(directory / f"{gateway_id}.key", private=True)
    if register:
        hub.admin.add_gateway(gateway_id, cert_pem=issued.cert_pem.bytes.decode())
    return Identity(gateway_id, cert, key)


@dataclass
class Gateway:
    """The gateway's sync side, assembled as the running gateway will: DB, directory, client, loop."""

    hub: HubProcess
    gateway_id: str
    identity: Identity
    url: str
    hostname: str = HOSTNAME
    trust_root: Path | None = None
    api_url: str | None = None  # another way to the hub (through the chaos proxy)
    request_timeout: float = REQUEST_TIMEOUT
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    cache_miss_wait: float = 0.5
    revoked: list[tuple[str, str, float]] = field(default_factory=list)

    async def start(self, **sync_options: object) -> Gateway:
        upgrade(self.url)
        self.engine = open_engine(self.url)
        self.db = DatabaseThread()
        repository = CacheRepository(self.engine)
        self.client = HubClient.from_files(
            url=self.api_url or self.hub.api_url,
            hostname=self.hostname,
            gateway_id=self.gateway_id,
            trust_bundle_cert=self.trust_root or self.hub.hub_root,
            identity_cert=self.identity.cert,
            identity_pk=self.identity.key,
            request_timeout=self.request_timeout,
            connect_timeout=self.connect_timeout,
        )
        self.directory = DeviceDirectory(
            gateway_id=self.gateway_id,
            repository=repository,
            db=self.db,
            clock=utcnow,
            snapshot=await self.db.run(repository.load),
            fetcher=self.client.device,
            cache_miss_wait=self.cache_miss_wait,
        )
        loop = asyncio.get_running_loop()
        self.directory.on_revoked(lambda device_id, reason: self.revoked.append((device_id, reason, loop.time())))
        options: dict[str, object] = {
            "clock": utcnow, "long_poll_wait": LONG_POLL, "page_size": 10, "backoff_base": 0.05, "backoff_cap": 0.3,
        }
        self.sync = RegistrySync(self.directory, self.client, **(options | sync_options))  # type: ignore[arg-type]
        self.sync.start()
        return self

    async def stop(self) -> None:
        await self.sync.stop()
        await self.directory.close()
        await self.client.close()
        self.db.close()
        self.engine.dispose()


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProcess]:
    with HubProcess.start(tmp_path_factory.mktemp("hub") / "hub", hostname=HOSTNAME) as process:
        yield process


@pytest.fixture
async def gateways(hub: HubProcess, tmp_path: Path) -> AsyncIterator[Callable[..., Gateway]]:
    """Makes gateways with a fresh identity and their own SQLite database; stops them all at the end."""
    made: list[Gateway] = []

    def make(prefix: str = "gw", *, url: str | None = None, identity: Identity | None = None, **kw: object) -> Gateway:
        identity = identity or new_identity(hub, tmp_path / "ids", prefix)
        url = url or f"sqlite:///{tmp_path / identity.gateway_id / 'edgegate.db'}"
        gateway = Gateway(hub, identity.gateway_id, identity, url, **kw)  # type: ignore[arg-type]
        made.append(gateway)
        return gateway

    yield make
    for gateway in made:
        if hasattr(gateway, "sync"):
            await gateway.stop()


def stored_ids(gateway: Gateway) -> set[str]:
    """The device ids in the gateway's cache table (it follows memory a moment later)."""
    return {d.device_id for d in CacheRepository(gateway.engine).load().devices}


def add_devices(hub: HubProcess, gateway_id: str, count: int, prefix: str = "dev") -> list[str]:
    ids = [f"{prefix}{n:03d}-{gateway_id}" for n in range(count)]
    for device_id in ids:
        hub.admin.add_device(device_id, parent=gateway_id, thumbprint=THUMB_A)
    return ids


# -- full sync ------------------------------------------------------------------------------------


async def test_full_sync_brings_exactly_the_device_scope(gateways: Callable[..., Gateway], hub: HubProcess) -> None:
    gw = gateways("full")
    mine = add_devices(hub, gw.gateway_id, 25)  # three pages of 10
    neighbour = new_identity(hub, gw.identity.cert.parent, "neighbour")
    hub.admin.add_device("theirs-" + neighbour.gateway_id, parent=neighbour.gateway_id, ca=True)
    device_ca = CA.create_root("device CA " + gw.gateway_id)
    hub.admin.add_ca("ca-" + gw.gateway_id, device_ca.cert_pem.bytes.decode())
    await gw.start()

    await wait_until(lambda: gw.sync.state is HubState.ONLINE, what="online")
    assert {d for d in mine if gw.directory.lookup(d)} == set(mine)
    assert len(gw.directory) == 25
    assert gw.directory.lookup("theirs-" + neighbour.gateway_id) is None
    record = gw.directory.lookup(mine[0])
    assert record is not None
    assert (record.auth_type, record.primary_thumbprint) == (AuthType.SELF_SIGNED, THUMB_A)
    assert record.parent == gw.gateway_id
    assert device_ca.cert in gw.directory.anchors().roots
    repository = CacheRepository(gw.engine)
    await wait_until(lambda: repository.load().status.online, what="status saved")  # saved just after the switch
    stored = repository.load()
    assert {d.device_id for d in stored.devices} == set(mine)
    assert stored.sequence == gw.directory.sequence
    assert stored.status.last_full_sync_at is not None


# -- revocation through the change feed ------------------------------------------------------------


async def test_the_change_feed_revokes_by_long_poll(gateways: Callable[..., Gateway], hub: HubProcess) -> None:
    gw = gateways("revoke")
    d_disable, d_remove, d_move, d_rotate, d_add_secondary = add_devices(hub, gw.gateway_id, 5)
    other = new_identity(hub, gw.identity.cert.parent, "other")
    # The hub's longest poll: a revocation that came at a poll's timeout, not by its wake, would take 120 s
    # and fail the 60 s waits below. How fast the wake is, is printed, not asserted (bench/ measures it).
    await gw.start(long_poll_wait=timedelta(seconds=120))
    await wait_until(lambda: gw.sync.state is HubState.ONLINE and len(gw.directory) == 5, what="synced")
    await asyncio.sleep(0.2)  # let the long poll settle on the hub
    loop = asyncio.get_running_loop()

    latencies = {}
    actions: list[tuple[str, Callable[[], object], str]] = [
        (d_disable, lambda: hub.admin.disable(d_disable), "device_disabled"),
        (d_remove, lambda: hub.admin.remove_device(d_remove), "device_removed"),
        (d_move, lambda: hub.admin.update_device(d_move, parent=other.gateway_id), "device_removed"),
        (d_rotate, lambda: hub.admin.update_device(d_rotate, primary_thumbprint=THUMB_B), "thumbprints_changed"),
    ]
    for device_id, action, reason in actions:
        written = loop.time()
        await asyncio.to_thread(action)
        await wait_until(lambda d=device_id: any(r[0] == d for r in gw.revoked), what=f"revoke {device_id}")
        fired = next(r for r in gw.revoked if r[0] == device_id)
        assert fired[1] == reason
        latencies[reason if reason != "device_removed" or device_id == d_remove else "moved_out"] = fired[2] - written
    print("\nrevocation latency (admin write -> callback): "
          + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in latencies.items()))

    # Adding a secondary thumbprint keeps the old one valid: it arrives, and nobody is kicked for it.
    await asyncio.to_thread(hub.admin.update_device, d_add_secondary, secondary_thumbprint=THUMB_B)
    await wait_until(lambda: (r := gw.directory.lookup(d_add_secondary)) is not None
                     and r.secondary_thumbprint == THUMB_B, what="secondary")
    assert [r[0] for r in gw.revoked] == [d_disable, d_remove, d_move, d_rotate]
    disabled = gw.directory.lookup(d_disable)
    assert disabled is not None
    assert not disabled.enabled
    assert gw.directory.lookup(d_remove) is None
    assert gw.directory.lookup(d_move) is None
    await wait_until(lambda: stored_ids(gw) == {d_disable, d_rotate, d_add_secondary}, what="table follows memory")


# -- outages ----------------------------------------------------------------------------------------


async def test_refused_and_blackholed_hub_keep_the_cache_and_changes_arrive_after(
    gateways: Callable[..., Gateway], hub: HubProcess
) -> None:
    gw = gateways("outage", request_timeout=3.0)  # a blackholed hub is only noticed by the timeout
    d1, d2, d3 = add_devices(hub, gw.gateway_id, 3)
    await gw.start()
    await wait_until(lambda: gw.sync.state is HubState.ONLINE and len(gw.directory) == 3, what="synced")
    syncs = gw.sync.full_syncs
    try:
        for fault in ("down", "blackhole"):
            cached = {d: gw.directory.lookup(d) for d in (d1, d2, d3, "new-" + gw.gateway_id)}
            await asyncio.to_thread(hub.admin.fault, fault)
            took = await wait_until(lambda: gw.sync.state is HubState.OFFLINE, what=f"offline ({fault})")
            # Switching faults drops the listener for a moment: the first failure may read "refused".
            symptom = "refused" if fault == "down" else "did not answer"
            await wait_until(lambda s=symptom: s in (gw.directory.status.last_error or ""), what=symptom)
            print(f"\n{fault}: offline after {took:.1f}s; last error: {gw.directory.status.last_error}")
            assert {d: gw.directory.lookup(d) for d in cached} == cached  # nothing evicted, nothing changed
            assert gw.directory.status.online is False
            # Changes made while the gateway cannot see the hub ...
            if fault == "down":
                await asyncio.to_thread(hub.admin.disable, d1)
                await asyncio.to_thread(hub.admin.remove_device, d2)
                await asyncio.to_thread(hub.admin.add_device, "new-" + gw.gateway_id, parent=gw.gateway_id,
                                        thumbprint=THUMB_B)
            revoked = len(gw.revoked)
            await asyncio.sleep(0.5)
            assert len(gw.revoked) == revoked  # ... change nothing here while offline
            assert {d: gw.directory.lookup(d) for d in cached} == cached
            await asyncio.to_thread(hub.admin.fault, "clear")
            await wait_until(lambda: gw.sync.state is HubState.ONLINE, what="back online")
    finally:
        hub.admin.fault("clear")
    assert gw.sync.full_syncs == syncs + 2  # a full resync on every reconnect
    assert [(r[0], r[1]) for r in gw.revoked] == [(d1, "device_disabled"), (d2, "device_removed")]
    assert gw.directory.lookup("new-" + gw.gateway_id) is not None
    await wait_until(lambda: stored_ids(gw) == {d1, d3, "new-" + gw.gateway_id}, what="table follows memory")


async def test_long_polls_cut_by_a_middlebox_fall_back_to_deltas(tmp_path: Path) -> None:
    """A middlebox that kills idle connections: every parked long poll is cut, quick requests get through."""
    # The hub counts a long poll as waiting until the poll's own timeout, even once its connection is cut
    # (aiohttp does not end a handler when its client goes). So this test has a hub of its own, where no
    # other test's poll is counted, and the cutter cuts when the count rises: a poll has just parked. A
    # count read against a fixed start cut too little (another test's poll ended and this one's stood in
    # for it) or, with this test's cut polls still counted, every 50 ms, the quick requests too.
    with HubProcess.start(tmp_path / "own-hub", hostname=HOSTNAME) as own:
        proxy = ProxyProcess(("127.0.0.1", own.api_port), tmp_path)

        async def cut_parked_long_polls() -> None:
            seen = 0
            while True:
                waiting = (await asyncio.to_thread(own.admin.health))["waiting"]
                if waiting > seen:
                    await asyncio.to_thread(proxy.command, "cut")
                seen = waiting
                await asyncio.sleep(0.05)

        cutter = asyncio.create_task(cut_parked_long_polls())
        identity = new_identity(own, tmp_path / "ids", "fallback")
        (d1,) = add_devices(own, identity.gateway_id, 1)
        gw = Gateway(own, identity.gateway_id, identity, f"sqlite:///{tmp_path / 'gw.db'}",
                     api_url=f"https://127.0.0.1:{proxy.port}")
        try:
            # Cut polls stay counted for the poll's wait: 120 s, far longer than this test.
            await gw.start(long_poll_wait=timedelta(seconds=120), delta_interval=timedelta(seconds=0.2))
            await wait_until(lambda: gw.sync.state is HubState.ONLINE, what="online")
            await wait_until(lambda: not gw.sync.long_poll, what="fallback to deltas")
            assert gw.sync.state is HubState.ONLINE  # the hub is fine; only long polls do not get through
            loop = asyncio.get_running_loop()
            written = loop.time()
            await asyncio.to_thread(own.admin.disable, d1)
            await wait_until(lambda: bool(gw.revoked), what="revocation by delta")
            print(f"\ndelta fallback: revocation latency {(gw.revoked[0][2] - written) * 1000:.0f} ms")
            assert gw.sync.full_syncs == 1  # never went offline, never resynced
            assert not gw.sync.long_poll  # the revocation came by a delta
        finally:
            cutter.cancel()
            await asyncio.gather(cutter, return_exceptions=True)
            if hasattr(gw, "sync"):
                await gw.stop()
            proxy.stop()


async def test_hub_killed_then_gateway_restarts_from_the_persisted_cache(
    tmp_path: Path, database_url: str  # noqa: F811 - the fixture imported above
) -> None:
    with HubProcess.start(tmp_path / "own-hub", hostname=HOSTNAME) as own:
        identity = new_identity(own, tmp_path / "ids", "restart")
        ids = add_devices(own, identity.gateway_id, 5)
        ca = CA.create_root("restart CA")
        own.admin.add_ca("restart-ca", ca.cert_pem.bytes.decode())
        first = await Gateway(own, identity.gateway_id, identity, database_url).start()
        try:
            await wait_until(lambda: first.sync.state is HubState.ONLINE and len(first.directory) == 5, what="synced")
            own.stop()  # killed
            await wait_until(lambda: first.sync.state is HubState.OFFLINE, what="offline")
            assert all(first.directory.lookup(d) for d in ids)
        finally:
            await first.stop()

        # The gateway restarts while the hub is still down: it serves from the database at once.
        second = await Gateway(own, identity.gateway_id, identity, database_url).start()
        try:
            assert {d for d in ids if second.directory.lookup(d)} == set(ids)
            assert ca.cert in second.directory.anchors().roots
            await wait_until(lambda: second.sync.state is HubState.OFFLINE, what="offline after restart")
            assert len(second.directory) == 5
            assert second.directory.status.offline_since is not None
            own.restart()
            await wait_until(lambda: second.sync.state is HubState.ONLINE, what="online after hub restart")
            assert len(second.directory) == 5
            assert second.revoked == []
        finally:
            await second.stop()


async def test_a_hub_that_lost_its_registry_is_resynced_in_full(tmp_path: Path) -> None:
    with HubProcess.start(tmp_path / "own-hub", hostname=HOSTNAME) as own:
        identity = new_identity(own, tmp_path / "ids", "reset")
        old = add_devices(own, identity.gateway_id, 4, prefix="old")
        gw = await Gateway(own, identity.gateway_id, identity, f"sqlite:///{tmp_path / 'gw.db'}").start()
        try:
            await wait_until(lambda: gw.sync.state is HubState.ONLINE and len(gw.directory) == 4, what="synced")
            cursor = gw.directory.sequence
            assert cursor is not None
            own.stop()
            for leftover in own.directory.glob("registry.db*"):  # the hub loses its registry
                leftover.unlink()
            own.restart()
            own.admin.add_gateway(identity.gateway_id, cert_pem=identity.cert.read_text())
            (new,) = add_devices(own, identity.gateway_id, 1, prefix="new")
            assert own.admin.health()["sequence"] < cursor  # the hub's sequence went backwards
            assert (await gw.client.changes(cursor, 10)).reset  # the feed cannot continue from our cursor
            await wait_until(lambda: gw.directory.get(new) is not None, what="resynced")
            assert all(gw.directory.get(d) is None for d in old)
            assert sorted(r[0] for r in gw.revoked) == sorted(old)
            assert gw.directory.sequence == own.admin.health()["sequence"]
        finally:
            await gw.stop()


# -- cache misses over the real API -------------------------------------------------------------------


async def test_a_cache_miss_fetches_one_device_from_the_hub(gateways: Callable[..., Gateway], hub: HubProcess) -> None:
    # 5 s for a fetch, so the hub's answer is in time on a loaded machine; a blackholed fetch's own deadlines
    # (120 s to connect, 120 s to answer) are far past the 60 s below: only the cache-miss wait ends it sooner.
    gw = gateways("miss", cache_miss_wait=5.0, connect_timeout=120.0, request_timeout=120.0)
    await gw.start()
    await wait_until(lambda: gw.sync.state is HubState.ONLINE, what="online")
    await gw.sync.stop()  # no change feed: only the single-device fetch can bring it
    device = "late-" + gw.gateway_id
    await asyncio.to_thread(hub.admin.add_device, device, parent=gw.gateway_id, thumbprint=THUMB_A)
    assert gw.directory.lookup(device) is None
    record = await gw.directory.lookup_or_fetch(device)
    assert record is not None
    assert record.primary_thumbprint == THUMB_A
    assert gw.directory.lookup(device) == record
    assert await gw.directory.lookup_or_fetch("nobody-" + gw.gateway_id) is None  # 404

    try:
        await asyncio.to_thread(hub.admin.fault, "blackhole")
        # cache_miss_wait bounds the CONNECT stall
        assert await asyncio.wait_for(gw.directory.lookup_or_fetch("blackholed-" + gw.gateway_id), 60) is None
    finally:
        hub.admin.fault("clear")


# -- the hub refuses us; we cannot trust the hub -----------------------------------------------------


async def test_wrong_identity_is_rejected_loudly_and_the_cache_is_kept(
    gateways: Callable[..., Gateway], hub: HubProcess, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = gateways("victim")
    ids = add_devices(hub, good.gateway_id, 3)
    await good.start()
    await wait_until(lambda: good.sync.state is HubState.ONLINE and len(good.directory) == 3, what="synced")
    await good.stop()

    # Same gateway id and database, but presenting another registered gateway's identity certificate.
    impostor = new_identity(hub, tmp_path / "ids", "impostor")
    with caplog.at_level(logging.ERROR, logger="edgegate.sync"):
        bad = await gateways(url=good.url, identity=Identity(good.gateway_id, impostor.cert, impostor.key)).start()
        await wait_until(lambda: bad.sync.state is HubState.REJECTED, what="rejected")
        await asyncio.sleep(1.0)  # several retries
    assert {d for d in ids if bad.directory.lookup(d)} == set(ids)
    error = bad.directory.status.last_error or ""
    assert "401 thumbprint_mismatch" in error
    assert good.gateway_id in error
    refusals = [r for r in caplog.records if "REFUSED" in r.getMessage()]
    assert len(refusals) == 1  # loud once per state change, not once per retry
    assert refusals[0].levelno == logging.ERROR

    stranger = HubClient.from_files(url=hub.api_url, hostname=HOSTNAME, gateway_id="never-registered",
                                    trust_bundle_cert=hub.hub_root, identity_cert=impostor.cert,
                                    identity_pk=impostor.key)
    try:
        with pytest.raises(HubRejected, match="401 unknown_gateway"):
            await stranger.cas()
    finally:
        await stranger.close()


async def test_a_hub_certificate_for_another_name_or_root_is_unavailable(
    gateways: Callable[..., Gateway], hub: HubProcess, tmp_path: Path
) -> None:
    identity = new_identity(hub, tmp_path / "ids", "tls")

    def client(hostname: str = HOSTNAME, root: Path | None = None) -> HubClient:
        return HubClient.from_files(url=hub.api_url, hostname=hostname, gateway_id=identity.gateway_id,
                                    trust_bundle_cert=root or hub.hub_root, identity_cert=identity.cert,
                                    identity_pk=identity.key, request_timeout=REQUEST_TIMEOUT)

    right = client()
    try:
        assert await right.cas() is not None  # positive control: right name, right root
    finally:
        await right.close()

    wrong_name = client(hostname="not-the-hub.local")
    try:
        with pytest.raises(HubUnavailable, match=r"Hostname mismatch, .* not valid for 'not-the-hub\.local'"):
            await wrong_name.scope_page(None, 10)
    finally:
        await wrong_name.close()

    stranger_root = CA.create_root("not the hub root").cert_pem.write_to_path(tmp_path / "stranger.pem")
    wrong_root = client(root=stranger_root)
    try:
        with pytest.raises(HubUnavailable, match=r"certificate verify failed|unable to get local issuer"):
            await wrong_root.scope_page(None, 10)
    finally:
        await wrong_root.close()

    # The sync loop treats it as an outage (offline, cache kept), naming the reason.
    gw = gateways(identity=identity, hostname="not-the-hub.local")
    await gw.start()
    await wait_until(lambda: gw.sync.state is HubState.OFFLINE, what="offline")
    assert "Hostname mismatch" in (gw.directory.status.last_error or "")


async def test_status_file_reflects_the_running_sync(gateways: Callable[..., Gateway], hub: HubProcess,
                                                     tmp_path: Path) -> None:
    from gateway.service.status_file import read_status, write_status

    gw = gateways("status")
    add_devices(hub, gw.gateway_id, 2)
    await gw.start()
    await wait_until(lambda: gw.sync.state is HubState.ONLINE and len(gw.directory) == 2, what="synced")
    write_status(tmp_path / "status.json", {"connected_devices": 0, "sync": gw.sync.describe()})
    status = read_status(tmp_path / "status.json")
    assert status is not None
    assert status["sync"]["state"] == "online"
    assert status["sync"]["cached_devices"] == 2
    assert status["sync"]["last_error"] is None
    assert time.time() - datetime.fromisoformat(status["written_at"]).timestamp() < 5

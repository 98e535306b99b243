"""Assembles a running gateway from a validated Config: PKI, database, cache and sync, outbox and
forwarder, cloud-to-device, broker and front door. The only module that knows how the parts fit."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import signal
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.auth.decision import AuthPolicy
from gateway.broker.admission import AdmissionTokens
from gateway.broker.factory import build_broker
from gateway.cache.directory import DeviceDirectory
from gateway.cache.repository import CacheRepository
from gateway.config import Config
from gateway.errors import ConfigError
from gateway.frontdoor.server import FrontDoor, FrontDoorLimits
from gateway.metrics import Counters
from gateway.outbox.wiring import OUTBOX_DIR, outbox_from_config
from gateway.pki import load_certs
from gateway.records import DeviceRecord
from gateway.server_identity import ServerCertKeeper, describe_chain
from gateway.store.db import DatabaseThread, open_engine, redacted
from gateway.store.guard import history_problems, state_dir_problem, write_note
from gateway.store.migrate import migrate
from gateway.sync.hubclient import HubClient
from gateway.sync.loop import RegistrySync
from gateway.sync.status_file import STATUS_FILE_NAME, write_status
from gateway.upstream.c2d import CloudToDevice
from gateway.upstream.forwarder import Forwarder

log = logging.getLogger("edgegate")

# How often status.json (read by `edgegate status`) is rewritten.
STATUS_EVERY = 2.0


def utcnow() -> datetime:
    return datetime.now(UTC)


class CacheDirectory:
    """The front door's view of the device cache: records from memory, and the policy of the moment."""

    def __init__(self, directory: DeviceDirectory, gateway_id: str, config: Config) -> None:
        self.directory, self.gateway_id, self.config = directory, gateway_id, config

    def lookup(self, device_id: str) -> DeviceRecord | None:
        return self.directory.lookup(device_id)

    async def lookup_or_fetch(self, device_id: str) -> DeviceRecord | None:
        return await self.directory.lookup_or_fetch(device_id)

    def auth_policy(self) -> AuthPolicy:
        return AuthPolicy(self.gateway_id, self.directory.anchors(), self.config.auth.clock_skew_tolerance,
                          cache_fresh=self.directory.cache_fresh())


class Gateway:
    """A running gateway; `await Gateway.start(config)`, then `await gateway.stop()`."""

    def __init__(self, config: Config, clock: Callable[[], datetime]) -> None:
        self.config, self.clock = config, clock
        self.outbox_dir = config.state_dir / OUTBOX_DIR
        self.state_problems: list[str] = []
        self.counters = Counters()
        self.tasks: list[asyncio.Task[Any]] = []
        self.addresses: list[tuple[str, int]] = []

    @classmethod
    async def start(cls, config: Config, *, clock: Callable[[], datetime] = utcnow) -> Gateway:
        gateway = cls(config, clock)
        await gateway._start()
        return gateway

    async def _start(self) -> None:
        config = self.config
        problem = state_dir_problem(config.state_dir)
        if problem is not None:
            raise ConfigError(str(config.source), "state_dir", problem)
        self.state_problems = history_problems(config.state_dir, config.storage.url, self.outbox_dir)
        for lost in self.state_problems:
            log.critical("STATE LOST: %s", lost)
        self.keeper = ServerCertKeeper(config, self.clock)
        trust_bundle_path = config.trust_bundle_cert or self.keeper.edge.trust_bundle_path

        url = config.storage.url
        revision = await asyncio.to_thread(migrate, url)
        log.info("database %s at migration %s", redacted(url), revision)
        self.engine = open_engine(url)
        repository = CacheRepository(self.engine)
        self.cache_db = DatabaseThread("edgegate-cache")
        snapshot = await self.cache_db.run(repository.load)

        hub = config.hub
        self.hub_client = None if hub is None else HubClient.from_files(
            url=hub.url, hostname=hub.hostname, gateway_id=hub.gateway_id, trust_bundle_cert=hub.trust_bundle_cert,
            identity_cert=hub.identity_cert, identity_pk=hub.identity_pk,
        )
        gateway_id = hub.gateway_id if hub is not None else config.hostname
        self.directory = DeviceDirectory(
            gateway_id=gateway_id, repository=repository, db=self.cache_db, clock=self.clock, snapshot=snapshot,
            trust_bundle=load_certs(trust_bundle_path), offline_trust=config.sync.offline_trust,
            fetcher=self.hub_client.device if self.hub_client else None,
            cache_miss_wait=config.sync.cache_miss_wait.total_seconds(),
        )

        self.outbox = outbox_from_config(config, self.outbox_dir, self.engine, self.counters)
        await self.outbox.open()
        write_note(config.state_dir, url, self.outbox_dir)

        self.tokens = AdmissionTokens()
        self.broker = build_broker(self.tokens)
        await self.broker.start()
        limits = config.limits
        self.door = FrontDoor(
            contexts=self.keeper.contexts, directory=CacheDirectory(self.directory, gateway_id, config),
            sink=self.outbox, broker=self.broker, tokens=self.tokens, counters=self.counters, clock=self.clock,
            limits=FrontDoorLimits(limits.max_connections, limits.max_packet_size,
                                   limits.handshake_timeout.total_seconds(),
                                   int(limits.max_keep_alive.total_seconds())),
        )
        self.directory.on_revoked(self._revoked)
        self.addresses = await self.door.start(config.listener.bind, config.listener.port)

        self._spawn(self.keeper.run())
        self.sync: RegistrySync | None = None
        self.forwarder: Forwarder | None = None
        if self.hub_client is not None:
            self.sync = RegistrySync(self.directory, self.hub_client, clock=self.clock,
                                     full_resync_interval=config.sync.full_resync_interval,
                                     delta_interval=config.sync.delta_interval)
            self.sync.start()
            self.forwarder = Forwarder(self.outbox, self.hub_client, counters=self.counters)
            self._spawn(self.forwarder.run())
            self._spawn(CloudToDevice(self.hub_client, self.broker).run())
        else:
            log.warning("no [hub] configured: serving the %d cached devices; telemetry stays in the outbox",
                        len(self.directory))
        self._spawn(self._write_status_forever())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self.tasks.append(asyncio.get_running_loop().create_task(coro))

    def _revoked(self, device_id: str, reason: str) -> None:
        if self.door.kick(device_id, f"revoked: {reason}"):
            log.warning("revoked device=%s: %s; its session was closed", device_id, reason)

    def describe_chain(self) -> str:
        return describe_chain(self.keeper.server)

    def status(self) -> dict[str, Any]:
        return {
            "hostname": self.config.hostname,
            "listening": [f"{h}:{p}" for h, p in self.addresses],
            "connected_devices": len(self.door.online),
            "devices": sorted(self.door.online),
            "outbox_depth": self.outbox.messages,
            "outbox_store": {**self.outbox.status(), "state_problems": self.state_problems},
            "outbox": self.forwarder.status() if self.forwarder else {"state": "no hub configured",
                                                                       "queue": self.outbox.depth()},
            "sync": self.sync.describe() if self.sync else {"state": "not configured"},
            "server_cert_not_after": self.keeper.server.not_after.isoformat(),
            "counters": self.counters.snapshot(),
        }

    async def _write_status_forever(self) -> None:
        path = self.config.state_dir / STATUS_FILE_NAME
        while True:
            await asyncio.to_thread(write_status, path, self.status())
            await asyncio.sleep(STATUS_EVERY)

    async def stop(self) -> None:
        await self.door.stop()
        if self.sync is not None:
            await self.sync.stop()
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.outbox.close()
        write_note(self.config.state_dir, self.config.storage.url, self.outbox_dir)
        if self.hub_client is not None:
            await self.hub_client.close()
        await self.broker.shutdown()
        self.cache_db.close()
        (self.config.state_dir / STATUS_FILE_NAME).unlink(missing_ok=True)


async def serve(config: Config, *, ready_file: Path | None = None) -> int:
    """Run until SIGTERM/SIGINT; returns the process exit status."""
    gateway = await Gateway.start(config)
    # Everything built so far (modules, the device cache, SQLAlchemy's tables) lives as long as the
    # process: keep it out of the collector's full passes, which otherwise walk it again and again as
    # devices connect (in a 2,000-device reconnect storm those passes took a fifth of the event loop's
    # time; freezing the startup heap halves them).
    gc.freeze()
    log.info("listening on %s for %s, presenting %s",
             ", ".join(f"{h}:{p}" for h, p in gateway.addresses), config.hostname, gateway.describe_chain())
    if ready_file is not None:
        tmp = ready_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"port": gateway.addresses[0][1], "addresses": gateway.addresses}))
        tmp.replace(ready_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping")
    await gateway.stop()
    log.info("stopped")
    return 0

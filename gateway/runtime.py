"""Assembles a running gateway from a validated Config: PKI, database, cache and sync, outbox and
forwarder, cloud-to-device, broker and front door. The only module that knows how the parts fit."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import json
import logging
import signal
import time
from collections.abc import Callable, Coroutine
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway import logs
from gateway.auth.decision import AuthPolicy
from gateway.broker.port import BrokerPort
from gateway.cache.directory import DeviceDirectory
from gateway.cache.repository import CacheRepository
from gateway.clock_watch import ClockWatch
from gateway.config import Config, load_config
from gateway.db.engine import DatabaseThread, open_engine, redacted
from gateway.db.guard import OUTBOX_DIR, history_problems, state_dir_problem, write_note
from gateway.db.migrate import Migration, migrate
from gateway.errors import ConfigError, EdgegateError
from gateway.est import adopt as est_adopt
from gateway.est.keeper import EstKeeper
from gateway.frontdoor.server import FrontDoor, FrontDoorLimits
from gateway.hub.client import HubClient
from gateway.hub.registry_sync import RegistrySync
from gateway.hub.sync_state import HubState
from gateway.metrics import Counters, Gauge
from gateway.outbox.wiring import outbox_from_config
from gateway.pki import load_certs
from gateway.pki.keeper import ServerCertKeeper, describe_chain, load_edge_ca, server_cert
from gateway.records import DeviceRecord
from gateway.service.budget import (
    MEMORY_PER_CONNECTION,
    MEMORY_PER_OPENSSL_CONNECTION,
    MIB,
    ConnectionBudget,
    connection_budget,
)
from gateway.service.failures import operational_sentence
from gateway.service.heap import TRIM_EVERY, can_trim, trim_heap
from gateway.service.memory_guard import MemoryGuard, read_anonymous, read_cgroup_unreclaimable
from gateway.service.notify import Notifier
from gateway.service.reload import reload_plan
from gateway.service.resources import raise_open_files, read_resources
from gateway.service.status_file import STATUS_FILE_NAME, write_status
from gateway.service.supervisor import Supervisor
from gateway.session_sweep import SessionSweep
from gateway.twin.wiring import start_twins
from gateway.upstream.c2d import CloudToDevice
from gateway.upstream.forwarder import Forwarder, ForwarderState
from gateway.upstream.pacing import ForwardPacer

if TYPE_CHECKING:
    from gateway.service.endpoint import HealthEndpoint

log = logging.getLogger("edgegate")

# How often status.json (read by `edgegate status`) is rewritten.
STATUS_EVERY = 2.0
# How often refused-connection and suppressed-rejection summaries are logged (at most).
SUMMARY_EVERY = 10.0
# How often "out of descriptors" is logged (at most) while accept() keeps failing.
RESOURCE_LOG_EVERY = 60.0
# Longest one shutdown step may take, so SIGTERM ends well inside systemd's TimeoutStopSec= (30 s).
STOP_STEP_TIMEOUT = 10.0


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

    def __init__(self, config: Config, clock: Callable[[], datetime], migration: Migration | None = None) -> None:
        self.config, self.clock = config, clock
        self.migration = migration  # begun by `edgegate run` before its imports (gateway.db.migrate)
        self.outbox_dir = config.state_dir / OUTBOX_DIR
        self.state_problems: list[str] = []
        self.counters = Counters()
        self.supervisor = Supervisor(self.counters)
        self._status_due = asyncio.Event()  # status.json now, not at the next STATUS_EVERY (the hub came or went)
        self.notifier = Notifier()
        self.endpoint: HealthEndpoint | None = None
        self.addresses: list[tuple[str, int]] = []
        self.ready = False
        self._refused_seen = self._refused_by_memory_seen = self._refused_by_pressure_seen = 0
        self._deferred_seen = 0  # reads that waited for a turn (gateway.frontdoor.turns), already counted

    @classmethod
    async def start(cls, config: Config, *, clock: Callable[[], datetime] = utcnow,
                    migration: Migration | None = None) -> Gateway:
        gateway = cls(config, clock, migration)
        try:
            await gateway._start()
        except BaseException:
            await gateway._undo_start()
            raise
        return gateway

    async def _undo_start(self) -> None:
        """Release what a failed start had built (a port in use is found only after the broker runs), so
        the failure is one line and not a cancelled task's traceback at exit."""
        for name, method in (("supervisor", "stop"), ("outbox", "close"), ("hub_client", "close"),
                             ("broker", "stop")):
            part = getattr(self, name, None)
            if part is not None:
                with contextlib.suppress(Exception):
                    await getattr(part, method)()
        cache_db = getattr(self, "cache_db", None)
        if cache_db is not None:
            cache_db.close()

    def _size(self) -> ConnectionBudget:
        """Raise the open-files limit as far as allowed, then fit max_connections to it and to memory."""
        before, after = raise_open_files()
        if after != before:
            log.info("raised the open-files limit from %d to %d (the hard limit)", before, after)
        budget = connection_budget(self.config.limits.max_connections, read_resources(self.config.limits.memory))
        (log.warning if budget.capped else log.info)("%s", budget.sentence())
        return budget

    def _front_door_limits(self) -> FrontDoorLimits:
        limits = self.config.limits
        return FrontDoorLimits(max_connections=self.budget.max_connections, max_packet_size=limits.max_packet_size,
                               handshake_timeout=limits.handshake_timeout.total_seconds(),
                               max_keep_alive=int(limits.max_keep_alive.total_seconds()),
                               connection_memory=self.budget.connection_memory)

    async def _start(self) -> None:
        config = self.config
        problem = state_dir_problem(config.state_dir)
        if problem is not None:
            raise ConfigError(str(config.source), "state_dir", problem)
        self.state_problems = history_problems(config.state_dir, config.storage.url, self.outbox_dir)
        for lost in self.state_problems:
            log.critical("STATE LOST: %s", lost)
        config.state_dir.mkdir(parents=True, exist_ok=True)
        self.budget = self._size()
        # Every decision from here on acts on the clock watch's time, which is the wall clock only while
        # the wall clock is plausible (gateway.clock_floor).
        self.clock_watch = ClockWatch(config.state_dir, tolerance=config.auth.clock_skew_tolerance, wall=self.clock,
                                      wall_epoch=time.time if self.clock is utcnow else None)
        self.est: EstKeeper | None = None
        if config.est is not None:
            # Enroll over EST what is missing before anything is served (RFC 7030, gateway.est).
            self.est = EstKeeper(config, config.est, self.clock_watch.now, self.counters)
            await self.est.ensure_ready()
        self.keeper = ServerCertKeeper(config, self.clock, self.clock_watch)
        self.clock = self.clock_watch.now
        trust_bundle_path = config.trust_bundle_cert or self.keeper.edge.trust_bundle_path

        url = config.storage.url
        migration = self.migration
        revision = await asyncio.to_thread(migration.result if migration is not None else partial(migrate, url))
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
        if self.hub_client is not None:
            self.hub_client.on_date = self.clock_watch.hub_date
        gateway_id = hub.gateway_id if hub is not None else config.hostname
        self.directory = DeviceDirectory(
            gateway_id=gateway_id, repository=repository, db=self.cache_db, clock=self.clock, snapshot=snapshot,
            trust_bundle=load_certs(trust_bundle_path), offline_trust=config.sync.offline_trust,
            fetcher=self.hub_client.device if self.hub_client else None,
            cache_miss_wait=config.sync.cache_miss_wait.total_seconds(),
        )

        self.outbox = outbox_from_config(config, self.outbox_dir, self.engine, self.counters,
                                         wallclock=self.clock_watch.epoch, supervisor=self.supervisor)
        await self.outbox.open()
        write_note(config.state_dir, url, self.outbox_dir)

        self.broker = BrokerPort(self.supervisor)
        await self.broker.start()
        # Twin GETs, reported patches and method answers go to the twin parts; telemetry to the outbox.
        self.twins = await start_twins(url, self.outbox, self.hub_client, self.broker.deliver_to, self.counters)
        self.cache_directory = CacheDirectory(self.directory, gateway_id, config)
        self.door = FrontDoor(
            contexts=self.keeper.contexts, directory=self.cache_directory,
            sink=self.twins.sink, port=self.broker, counters=self.counters, clock=self.clock,
            limits=self._front_door_limits(), wallclock=self.clock_watch.epoch,
        )
        self.directory.on_revoked(self._revoked)
        self.memory_guard = self._memory_guard()
        self.sweep = SessionSweep(lambda: list(self.door.sessions()), self.door.kick, clock=self.clock,
                                  skew=config.auth.clock_skew_tolerance, counters=self.counters)
        self.directory.on_anchors_changed(self.sweep.anchors_changed)
        self.addresses = await self.door.start(config.listener.bind, config.listener.port)

        supervise = self.supervisor
        supervise.loop("server-cert-renewal", self.keeper.run)
        supervise.loop("clock-watch", self.clock_watch.run)
        supervise.loop("session-sweep", self.sweep.run)
        self.sync: RegistrySync | None = None
        self.forwarder: Forwarder | None = None
        if self.hub_client is not None:
            self.sync = RegistrySync(self.directory, self.hub_client, clock=self.clock,
                                     on_state=lambda _: self._status_due.set(),
                                     full_resync_interval=config.sync.full_resync_interval,
                                     delta_interval=config.sync.delta_interval, supervisor=self.supervisor)
            log.info("serving %d cached devices (cursor %s); syncing with the hub at %s",
                     len(self.directory), self.directory.sequence, self.hub_client.url)
            # The sync loop keeps its own task: a renewed EST identity restarts it (_resync_now).
            self.sync.start()
            forwarder = self.forwarder = Forwarder(self.outbox, self.hub_client, counters=self.counters)
            supervise.loop("forwarder", forwarder.run)
            outbox, counters = self.outbox, self.counters
            pacer = ForwardPacer(depth=lambda: outbox.messages,
                                 hub_taking=lambda: forwarder.state is ForwarderState.CONNECTED,
                                 hold=lambda hold: self.door.hold_reading(hold, "pacer"),
                                 count=lambda: counters.inc("edgegate_read_holds_total"))
            supervise.loop("forward-pacing", pacer.run)
            supervise.loop("cloud-to-device", CloudToDevice(self.hub_client, self.broker).run)
        else:
            log.warning("no [hub] configured: serving the %d cached devices; telemetry stays in the outbox",
                        len(self.directory))
        for name, factory in self.twins.tasks:
            supervise.loop(name, factory)
        if self.est is not None:
            self.est.identity.adopt = (est_adopt.hub_identity(self.hub_client, hub, self._resync_now)
                                       if self.hub_client and hub else est_adopt.est_identity(self.est))
            if self.est.edge_ca is not None:
                self.est.edge_ca.adopt = est_adopt.edge_ca(self.keeper)
            supervise.loop("est-renewal", self.est.run)
        supervise.every("status-writer", STATUS_EVERY, self._write_status, sooner=self._status_due)
        supervise.every("log-summaries", SUMMARY_EVERY, self._log_summaries)
        if can_trim():
            supervise.every("heap-trim", TRIM_EVERY, self._trim_heap)
        supervise.loop("memory-guard", self.memory_guard.run)
        if self.notifier.watchdog is not None:
            supervise.every("systemd-watchdog", self.notifier.watchdog, self._watchdog)
        if config.health.listen is not None:
            from gateway.service.endpoint import HealthEndpoint  # prometheus_client: only with a listener

            self.endpoint = HealthEndpoint(self.health, self.metrics)
            host, port = await self.endpoint.start(*config.health.listen)
            log.info("health and metrics on http://%s:%d/healthz and /metrics", host, port)
        self.ready = True

    async def _resync_now(self) -> None:
        """After a renewed identity: a sync loop backing off from a refusal tries again at once."""
        if self.sync is not None and self.sync.state is not HubState.ONLINE:
            await self.sync.stop()
            self.sync.start()

    def _revoked(self, device_id: str, reason: str) -> None:
        if self.door.kick(device_id, f"revoked: {reason}"):
            log.warning("revoked device=%s: %s; its session was closed", device_id, reason)

    def describe_chain(self) -> str:
        return describe_chain(self.keeper.server)

    # ---- health, metrics, status ----------------------------------------------------------------

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Healthy: started, and no supervised task failing."""
        ok = self.ready and self.supervisor.healthy
        return ok, {"ready": self.ready, "healthy": ok, "failing": self.supervisor.failing(),
                    "tasks": self.supervisor.describe()}

    def gauges(self, oldest_enqueued_at: float | None, now: float) -> list[Gauge]:
        hub_state = self.sync.state.value if self.sync is not None else "not configured"
        days_left = (self.keeper.server.not_after - self.clock()).total_seconds() / 86400
        gauges = [
            Gauge("edgegate_connected_devices", "authenticated devices connected now", len(self.door.online)),
            Gauge("edgegate_connections", "device connections open now, authenticated or not",
                  len(self.door.connections)),
            Gauge("edgegate_max_connections", "the effective connection limit (after the resource budget)",
                  self.budget.max_connections),
            Gauge("edgegate_outbox_messages", "messages waiting in the outbox", self.outbox.messages),
            Gauge("edgegate_outbox_bytes", "payload bytes waiting in the outbox", self.outbox.bytes),
            Gauge("edgegate_outbox_oldest_age_seconds", "age of the oldest message waiting in the outbox",
                  0.0 if oldest_enqueued_at is None else max(0.0, now - oldest_enqueued_at)),
            Gauge("edgegate_cache_devices", "devices in the offline cache", len(self.directory)),
            Gauge("edgegate_server_cert_days_left", "days until the server certificate expires", days_left),
            Gauge("edgegate_ready", "1 once devices can connect", 1.0 if self.ready else 0.0),
        ]
        gauges += [Gauge("edgegate_hub_state", "1 for the hub link's current state", 1.0, {"state": hub_state})]
        gauges += [Gauge("edgegate_task_up", "1 while a supervised task runs, 0 while it is failing",
                         1.0 if h["state"] == "running" else 0.0, {"task": name})
                   for name, h in self.supervisor.describe().items()]
        return gauges

    async def metrics(self) -> bytes:
        oldest = await self.outbox.peek(1) if self.outbox.messages else []
        gauges = self.gauges(oldest[0].enqueued_at if oldest else None, self.clock().timestamp())
        from gateway.service.exposition import render

        return await asyncio.to_thread(render, self.counters.snapshot(), gauges)

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
            "clock": self.clock_watch.describe(),
            "counters": self.counters.snapshot(),
            "twins": self.twins.status(),
            "healthy": self.supervisor.healthy,
            "tasks": self.supervisor.describe(),
            "limits": {"max_connections": self.budget.max_connections, "configured": self.budget.configured,
                       "limited_by": self.budget.limiter.value, "explanation": self.budget.sentence()},
            "memory": self.memory_guard.status() | {
                "measured": "process" if self.budget.resources.memory_cgroup is None else "cgroup"},
        } | ({"est": self.est.status()} if self.est is not None else {})

    # ---- periodic work (supervised) -------------------------------------------------------------

    async def _write_status(self) -> None:
        await asyncio.to_thread(write_status, self.config.state_dir / STATUS_FILE_NAME, self.status())
        self.notifier.status(f"{len(self.door.online)} devices, outbox {self.outbox.messages}")

    def _memory_guard(self) -> MemoryGuard:
        door, counters = self.door, self.counters
        return MemoryGuard(limit=lambda: self.budget.resources.memory, used=self._memory_used,
                           refuse=door.short_of_memory, shed=door.shed, cap=door.cap,
                           connected=lambda: len(door.online),
                           hold=lambda hold: door.hold_reading(hold, "memory"), trim=self._trim_heap,
                           count=lambda level: counters.inc("edgegate_memory_pressure_total", level=level.name.lower()))

    def _memory_used(self) -> int | None:
        """What the memory guard measures against the limit: the cgroup v2 that sets it, where one does (its
        sockets and kernel memory count there too), else this process's anonymous memory."""
        cgroup = self.budget.resources.memory_cgroup
        return read_anonymous() if cgroup is None else read_cgroup_unreclaimable(cgroup)

    async def _trim_heap(self) -> None:
        if await asyncio.to_thread(trim_heap):
            self.counters.inc("edgegate_heap_trims_total")

    async def _log_summaries(self) -> None:
        # Counted here, every SUMMARY_EVERY, not read by read: reads wait only when the CPU is short.
        deferred = self.door.wiring.turns.deferred
        if deferred > self._deferred_seen:
            self.counters.inc("edgegate_reads_deferred_total", amount=deferred - self._deferred_seen)
            self._deferred_seen = deferred
        refused = self.counters.get("edgegate_connections_refused_total", reason="max_connections")
        if refused > self._refused_seen:
            log.warning("refused %d device connection(s) in the last %g s: the gateway is at max_connections=%d "
                        "(%s); connected devices, the hub link and the outbox keep their reserve",
                        refused - self._refused_seen, SUMMARY_EVERY, self.budget.max_connections,
                        self.budget.limiter.value)
        self._refused_seen = refused
        by_memory = self.counters.get("edgegate_connections_refused_total", reason="memory")
        if by_memory > self._refused_by_memory_seen:
            log.warning("refused %d device connection(s) in the last %g s: the %d open connections hold the "
                        "memory budget (%d MiB for connections; a TLS 1.3 device costs %d KiB, a TLS 1.2 one %d KiB); "
                        "connected devices, the hub link and the outbox keep their reserve",
                        by_memory - self._refused_by_memory_seen, SUMMARY_EVERY, len(self.door.connections),
                        (self.budget.connection_memory or 0) // MIB, MEMORY_PER_CONNECTION // 1024,
                        MEMORY_PER_OPENSSL_CONNECTION // 1024)
        self._refused_by_memory_seen = by_memory
        by_pressure = self.counters.get("edgegate_connections_refused_total", reason="memory_pressure")
        if by_pressure > self._refused_by_pressure_seen:
            used = self.memory_guard.last_used
            ceiling = self.memory_guard.ceiling
            log.warning("refused %d device connection(s) in the last %g s: memory is near its limit (%s of %d MiB "
                        "anonymous; gateway.service.memory_guard); %d devices connected%s",
                        by_pressure - self._refused_by_pressure_seen, SUMMARY_EVERY,
                        "?" if used is None else f"{used // MIB}", (self.budget.resources.memory or 0) // MIB,
                        len(self.door.online), "" if ceiling is None else f", at most {ceiling} admitted")
        self._refused_by_pressure_seen = by_pressure
        logs.log_rejection_summaries(logging.getLogger("edgegate.frontdoor"))

    async def _watchdog(self) -> None:
        self.notifier.ping()

    # ---- SIGHUP ---------------------------------------------------------------------------------

    def reload(self) -> str:
        """Re-read config.toml and the certificates; apply what can change live; say what needs a restart.
        A config that does not load changes nothing (the running one stays)."""
        try:
            new = load_config(self.config.source)
        except EdgegateError as exc:
            return f"reload refused, keeping the running config: {exc}"
        plan = reload_plan(self.config, new)
        if new.log.level != self.config.log.level:
            logs.set_level(new.log.level)
        # Only what can change live is taken over; the rest stays as started (and is named again at the
        # next SIGHUP until a restart applies it).
        new = replace(self.config, log=replace(self.config.log, level=new.log.level), limits=new.limits,
                      edge_ca=new.edge_ca, trust_bundle_cert=new.trust_bundle_cert, alt_names=new.alt_names,
                      auth=new.auth)
        self.config = new
        self.keeper.config = new
        self.cache_directory.config = new
        self.budget = connection_budget(new.limits.max_connections, read_resources(new.limits.memory))
        self.door.set_limits(self._front_door_limits())
        try:
            issue = self.keeper.issue_plan()  # never issues on a clock that cannot be trusted
            self.keeper.edge = load_edge_ca(new, issue)
            material = server_cert(new, self.keeper.edge, issue)
            self.keeper.contexts.reload(material.chain_path, material.key_path)  # re-reads the files
            self.keeper.server = material
            bundle = new.trust_bundle_cert or self.keeper.edge.trust_bundle_path
            self.directory.replace_trust_bundle(load_certs(bundle))
        except EdgegateError as exc:
            return f"certificates did not reload, the current ones stay: {exc}; {plan.sentence()}"
        return f"{plan.sentence()}; {self.budget.sentence()}; presenting {describe_chain(self.keeper.server)}"

    # ---- stopping -------------------------------------------------------------------------------

    async def stop(self) -> None:
        """Stop everything; a step that fails is logged and the next one still runs, so the outbox is
        always closed (its last commit made) and SIGTERM ends with status 0."""
        self.ready = False
        steps: list[tuple[str, Callable[[], Coroutine[Any, Any, None]]]] = [
            ("front door", self.door.stop),
            ("supervised tasks", self.supervisor.stop),
        ]
        if self.sync is not None:
            steps.append(("registry sync", self.sync.stop))
        steps.append(("outbox", self.outbox.close))
        if self.endpoint is not None:
            steps.append(("health endpoint", self.endpoint.stop))
        if self.hub_client is not None:
            steps.append(("hub client", self.hub_client.close))
        steps.append(("broker", self.broker.stop))
        for what, step in steps:
            try:
                await asyncio.wait_for(step(), STOP_STEP_TIMEOUT)
            except Exception as exc:
                log.error("stopping the %s failed, going on: %s: %s", what, type(exc).__name__, exc)
        write_note(self.config.state_dir, self.config.storage.url, self.outbox_dir)
        self.twins.close()
        self.cache_db.close()
        self.clock_watch.persist()
        with contextlib.suppress(OSError):
            (self.config.state_dir / STATUS_FILE_NAME).unlink(missing_ok=True)


async def serve(config: Config, *, ready_file: Path | None = None, migration: Migration | None = None) -> int:
    """Run until SIGTERM/SIGINT; returns the process exit status. `migration`: the database's, if begun already."""
    gateway = await Gateway.start(config, migration=migration)
    # Everything built so far (modules, the device cache, SQLAlchemy's tables) lives as long as the
    # process: keep it out of the collector's full passes, which otherwise walk it again and again as
    # devices connect (in a 2,000-device reconnect storm those passes took a fifth of the event loop's
    # time; freezing the startup heap halves them).
    gc.freeze()
    listening = ", ".join(f"{h}:{p}" for h, p in gateway.addresses)
    log.info("listening on %s for %s, presenting %s", listening, config.hostname, gateway.describe_chain())
    if ready_file is not None:
        health = gateway.endpoint.address if gateway.endpoint is not None else None
        tmp = ready_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"port": gateway.addresses[0][1], "addresses": gateway.addresses,
                                   "health": health}))
        tmp.replace(ready_file)
    gateway.notifier.ready(f"listening on {listening}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(_exception_handler(config))
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: _reload(gateway))
    await stop.wait()
    log.info("stopping")
    gateway.notifier.stopping()
    await gateway.stop()
    gateway.notifier.close()
    log.info("stopped")
    return 0


def _exception_handler(config: Config) -> Callable[[asyncio.AbstractEventLoop, dict[str, Any]], None]:
    """Out of descriptors (an accept() failing with EMFILE) is one line with the fix, at most once a minute,
    not a traceback per attempt; anything else goes to asyncio's default handler."""
    last = [-RESOURCE_LOG_EVERY]

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
            if loop.time() - last[0] >= RESOURCE_LOG_EVERY:
                last[0] = loop.time()
                log.error("%s (%s)", operational_sentence(exc, config), context.get("message", "accept failed"))
            return
        loop.default_exception_handler(context)

    return handle


def _reload(gateway: Gateway) -> None:
    gateway.notifier.reloading()
    outcome = gateway.reload()
    (log.info if outcome.startswith("reloaded") else log.warning)("SIGHUP: %s", outcome)
    gateway.notifier.reloaded(f"listening on {', '.join(f'{h}:{p}' for h, p in gateway.addresses)}")

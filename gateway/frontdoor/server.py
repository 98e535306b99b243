"""The front door's listening socket and the table of admitted devices."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from amqtt.broker import Broker

from gateway.auth.decision import AuthDecision
from gateway.auth.reasons import Reason
from gateway.auth.topics import DeviceTopics, TopicKind
from gateway.broker.admission import AdmissionTokens
from gateway.broker.link import LISTENER_NAME, BrokerReader, BrokerWriter
from gateway.errors import OutboxFull
from gateway.frontdoor.connection import DeviceConnection
from gateway.frontdoor.services import DeviceDirectory, MessageSink
from gateway.metrics import Counters
from gateway.mqtt.packets import Connect
from gateway.ratelimit import RateLimiter
from gateway.records import InboundMessage, PeerIdentity
from gateway.tls.contexts import ServerContextHolder

log = logging.getLogger("edgegate.frontdoor")


@dataclass(frozen=True, slots=True)
class FrontDoorLimits:
    max_connections: int = 10_000
    max_packet_size: int = 256 * 1024  # edgeHub's message size limit
    handshake_timeout: float = 10.0  # TLS handshake + CONNECT
    max_keep_alive: int = 600  # edgeHub caps keep-alive at 10 minutes

    def keepalive_limit(self, requested: int) -> float:
        """Seconds of silence after which a device is gone: 1.5 x keep-alive (MQTT-3.1.2-24).

        A keep-alive of 0 ("never") or above the cap is held to the cap, so no idle socket lives forever.
        """
        effective = requested if 0 < requested <= self.max_keep_alive else self.max_keep_alive
        return 1.5 * effective


class FrontDoor:
    """Accepts device connections, admits the authenticated ones, and keeps one per device id."""

    def __init__(
        self,
        *,
        contexts: ServerContextHolder,
        directory: DeviceDirectory,
        sink: MessageSink,
        broker: Broker,
        tokens: AdmissionTokens,
        limits: FrontDoorLimits,
        counters: Counters | None = None,
        clock: Callable[[], datetime],
        wallclock: Callable[[], float] = time.time,
    ) -> None:
        self.contexts = contexts
        self.directory = directory
        self.sink = sink
        self.broker = broker
        self.tokens = tokens
        self.limits = limits
        self.counters = counters or Counters()
        self.clock = clock
        self.wallclock = wallclock
        self.loop = asyncio.get_running_loop()
        self.tls_log_limiter = RateLimiter(interval=60.0, burst=3)
        self.deny_log_limiter = RateLimiter(interval=10.0, burst=5)
        self.connections: set[DeviceConnection] = set()
        self.online: dict[str, DeviceConnection] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self, host: str, port: int) -> list[tuple[str, int]]:
        """Listen; returns the bound (host, port) pairs (port 0 picks a free one)."""
        self._server = await self.loop.create_server(
            lambda: DeviceConnection(self), host=host, port=port, reuse_address=True, backlog=1024,
        )
        return [sock.getsockname()[:2] for sock in self._server.sockets]

    async def stop(self) -> None:
        """Stop accepting, disconnect every device, wait for the broker handlers to finish."""
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.kick("gateway shutting down")
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        if self._server is not None:
            await self._server.wait_closed()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ---- slots and the device table ----------------------------------------------------------

    def take_slot(self, conn: DeviceConnection) -> bool:
        if len(self.connections) >= self.limits.max_connections:
            return False
        self.connections.add(conn)
        return True

    def give_back_slot(self, conn: DeviceConnection) -> None:
        self.connections.discard(conn)

    def admit(self, conn: DeviceConnection) -> None:
        """Record an authenticated connection; a second one with the same id replaces the first."""
        assert conn.device_id is not None
        previous = self.online.get(conn.device_id)
        self.online[conn.device_id] = conn
        if previous is not None and previous is not conn:
            self.counters.inc("edgegate_session_takeovers_total")
            previous.kick("session taken over by a new authenticated connection")

    def release(self, conn: DeviceConnection) -> None:
        if conn.device_id is not None and self.online.get(conn.device_id) is conn:
            del self.online[conn.device_id]

    def kick(self, device_id: str, reason: str) -> bool:
        """Disconnect a device's live session (revocation); True if it was connected."""
        conn = self.online.get(device_id)
        if conn is None:
            return False
        self.counters.inc("edgegate_revocations_total")
        conn.kick(reason)
        return True

    # ---- decisions' side effects -------------------------------------------------------------

    def record_decision(self, decision: AuthDecision, peer: PeerIdentity, remote: tuple[str, int]) -> None:
        """One counter and, for a rejection, one log line naming device, thumbprint and reason."""
        if decision.ok:
            self.counters.inc("edgegate_auth_accepted_total")
            log.info("admitted device=%s thumbprint=%s from %s:%d",
                     decision.device_id, peer.sha256 or "-", *remote)
            return
        self.counters.inc("edgegate_auth_rejected_total", reason=decision.reason.value)
        log.warning(
            "rejected device=%s thumbprint=%s reason=%s from %s:%d: %s",
            decision.device_id or "-", peer.sha256 or "-", decision.reason.value, *remote, decision.message,
        )

    def check_will(self, decision: AuthDecision, connect: Connect) -> AuthDecision:
        """A will is a deferred publish: it must be one the device could send itself, as telemetry."""
        assert connect.will is not None
        verdict = DeviceTopics.for_device(decision.device_id).classify_publish(connect.will.topic)
        if verdict.allowed and verdict.kind is TopicKind.TELEMETRY and connect.will.qos < 2:
            return decision
        return replace(
            decision,
            ok=False,
            reason=Reason.WILL_TOPIC_DENIED,
            message=f"will topic {connect.will.topic!r} is not this device's telemetry topic",
        )

    def publish_will(self, conn: DeviceConnection, connect: Connect) -> None:
        assert connect.will is not None
        assert conn.device_id is not None
        verdict = DeviceTopics.for_device(conn.device_id).classify_publish(connect.will.topic)
        message = InboundMessage(
            device_id=conn.device_id,
            kind=verdict.kind.value,
            topic=connect.will.topic,
            payload=connect.will.payload,
            qos=connect.will.qos,
            properties=tuple(verdict.properties.items()),
            received_at=self.wallclock(),
        )
        try:
            self.sink.submit(message)
            self.counters.inc("edgegate_wills_published_total")
        except OutboxFull:
            self.counters.inc("edgegate_outbox_refused_total", qos="will")

    async def forget_clean_session(self, device_id: str, clean_session: bool) -> None:
        """Drop a leftover clean_session=1 session before a clean_session=0 CONNECT can resume it.

        amqtt 0.12.1 keeps a clean session after its connection ends (MQTT-3.1.2-6 says it ends with
        it), and a later clean_session=0 CONNECT inherits its clean flag, so nothing is ever queued for
        the device while it is away. A clean_session=1 CONNECT is handled by amqtt itself.
        """
        if clean_session:
            return
        entry = self.broker._sessions.get(device_id)
        if entry is not None and entry[0].clean_session:
            await self.broker._delete_session(device_id)

    async def attach_to_broker(self, reader: BrokerReader, writer: BrokerWriter) -> None:
        try:
            await self.broker.external_connected(reader, writer, LISTENER_NAME)
        except Exception:
            log.exception("broker session handler failed")

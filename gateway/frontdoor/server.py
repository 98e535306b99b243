"""The front door's listening socket and the table of admitted devices."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import replace
from datetime import datetime
from typing import Any

from gateway.auth.live import AdmittedChain
from gateway.broker.port import BrokerPort
from gateway.frontdoor.connection import DeviceConnection, Wiring
from gateway.frontdoor.limits import FrontDoorLimits
from gateway.frontdoor.services import DeviceDirectory, MessageSink
from gateway.frontdoor.turns import ReadTurns
from gateway.metrics import Counters
from gateway.ratelimit import RateLimiter
from gateway.service.budget import MEMORY_PER_CONNECTION, MEMORY_PER_OPENSSL_CONNECTION
from gateway.tls.contexts import ServerContextHolder

__all__ = ["FrontDoor", "FrontDoorLimits"]

log = logging.getLogger("edgegate.frontdoor")


class FrontDoor:
    """Accepts device connections, admits the authenticated ones, and keeps one per device id."""

    def __init__(
        self,
        *,
        contexts: ServerContextHolder,
        directory: DeviceDirectory,
        sink: MessageSink,
        port: BrokerPort,
        limits: FrontDoorLimits,
        counters: Counters | None = None,
        clock: Callable[[], datetime],
        wallclock: Callable[[], float] = time.time,
    ) -> None:
        self.limits = limits
        self.counters = counters or Counters()
        self.loop = asyncio.get_running_loop()
        self.connections: set[DeviceConnection] = set()
        self.charged = 0  # bytes the open connections are charged against limits.connection_memory
        self.online: dict[str, DeviceConnection] = {}
        # Who holds device reads: "pacer" (the forwarder, gateway.upstream.pacing), "memory" (the memory guard,
        # gateway.service.memory_guard). Reads go on when nobody does.
        self.holders: set[str] = set()
        self.refusing: str | None = None  # why new connections are refused at accept, whatever the limits
        self.ceiling: int | None = None  # the most connections memory was seen to hold (the memory guard's)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None
        self.wiring = Wiring(
            table=self, contexts=contexts, directory=directory, sink=sink, port=port, limits=limits,
            counters=self.counters, clock=clock, wallclock=wallclock,
            tls_log_limiter=RateLimiter(interval=60.0, burst=3), deny_log_limiter=RateLimiter(interval=10.0, burst=5),
            spawn=self._spawn, turns=ReadTurns(self.loop.call_soon),
        )

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self, host: str, port: int) -> list[tuple[str, int]]:
        """Listen; returns the bound (host, port) pairs (port 0 picks a free one)."""
        self._server = await self.loop.create_server(
            lambda: DeviceConnection(self.wiring, self.loop), host=host, port=port, reuse_address=True,
            backlog=1024,
        )
        return [sock.getsockname()[:2] for sock in self._server.sockets]

    async def stop(self) -> None:
        """Stop accepting, disconnect every device, wait for the lookups under way to finish."""
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.kick("gateway shutting down")
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        if self._server is not None:
            await self._server.wait_closed()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ---- slots and the device table (gateway.frontdoor.connection.ConnectionTable) -----------

    def take_slot(self, conn: DeviceConnection) -> str | None:
        if self.refusing is not None:
            return self.refusing
        if self.ceiling is not None and len(self.connections) >= self.ceiling:
            return "memory_pressure"
        limits = self.limits
        if len(self.connections) >= limits.max_connections:
            return "max_connections"
        memory = limits.connection_memory
        if memory is not None and self.charged + MEMORY_PER_OPENSSL_CONNECTION > memory:
            return "memory"
        self.connections.add(conn)
        conn.charge = MEMORY_PER_OPENSSL_CONNECTION
        self.charged += MEMORY_PER_OPENSSL_CONNECTION
        return None

    def settle_charge(self, conn: DeviceConnection, keeps_openssl: bool) -> None:
        if not keeps_openssl and conn in self.connections and conn.charge > MEMORY_PER_CONNECTION:
            self.charged -= conn.charge - MEMORY_PER_CONNECTION
            conn.charge = MEMORY_PER_CONNECTION

    def give_back_slot(self, conn: DeviceConnection) -> None:
        if conn in self.connections:
            self.connections.discard(conn)
            self.charged -= conn.charge
            conn.charge = 0

    def admit(self, conn: DeviceConnection) -> None:
        """Record an authenticated connection; a second one with the same id replaces the first."""
        assert conn.device_id is not None
        previous = self.online.get(conn.device_id)
        self.online[conn.device_id] = conn
        if self.holders:
            conn.hold(True)
        if previous is not None and previous is not conn:
            self.counters.inc("edgegate_session_takeovers_total")
            previous.kick("session taken over by a new authenticated connection")

    def release(self, conn: DeviceConnection) -> None:
        if conn.device_id is not None and self.online.get(conn.device_id) is conn:
            del self.online[conn.device_id]

    def set_limits(self, limits: FrontDoorLimits) -> None:
        """New limits (SIGHUP): connections accepted from now on get them; open ones keep theirs."""
        self.limits = limits
        self.wiring = replace(self.wiring, limits=limits)

    # ---- the gateway's view ------------------------------------------------------------------

    def hold_reading(self, hold: bool, by: str = "pacer") -> int:
        """Stop (or resume) reading every admitted device on behalf of `by`: so the forwarder gets the event
        loop to itself (gateway.upstream.pacing), or so memory stops growing (gateway.service.memory_guard).
        Reading resumes once no holder is left. Returns how many devices are admitted. Handshakes go on."""
        before = bool(self.holders)
        if hold:
            self.holders.add(by)
        else:
            self.holders.discard(by)
        held = bool(self.holders)
        if held != before:
            self.wiring.turns.hold(held)
            for conn in list(self.online.values()):
                conn.hold(held)
        return len(self.online)

    def short_of_memory(self, short: bool) -> None:
        """The memory guard's first step (gateway.service.memory_guard): refuse every new connection at
        accept, before its handshake, and grant the fewest reads a turn (gateway.frontdoor.turns); or stop."""
        self.refusing = "memory_pressure" if short else None
        self.wiring.turns.scarce = short

    def cap(self, ceiling: int | None) -> None:
        """Admit no more than `ceiling` connections (None: only the limits), for the memory guard."""
        self.ceiling = ceiling

    def shed(self, fraction: float) -> int:
        """Disconnect `fraction` of the admitted devices (at least one), the most recently connected first,
        for the memory guard; returns how many."""
        online = list(self.online.values())
        count = min(len(online), max(1, int(len(online) * fraction)))
        for conn in online[len(online) - count:]:
            conn.kick("memory is short: the gateway sheds load (gateway.service.memory_guard)")
        self.counters.inc("edgegate_memory_shed_total", amount=count)
        return count

    def kick(self, device_id: str, reason: str) -> bool:
        """Disconnect a device's live session (revocation); True if it was connected."""
        conn = self.online.get(device_id)
        if conn is None:
            return False
        self.counters.inc("edgegate_revocations_total")
        conn.kick(reason)
        return True

    def sessions(self) -> Iterator[tuple[str, AdmittedChain]]:
        """Each connected device with the chain it was admitted with (for certificate-expiry checks)."""
        for device_id, conn in list(self.online.items()):
            admitted = conn.session.admitted
            if admitted is not None:
                yield device_id, admitted

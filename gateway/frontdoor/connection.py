"""One device connection: the asyncio shell around a DeviceSession (aioquic's asyncio/protocol.py
around its QuicConnection). It moves bytes between the socket, TLS and the session, performs the
session's events, and arms one timer. Every input ends in `_pump()`; no decision is made here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any, Protocol, cast

from gateway.broker.port import BrokerLink, BrokerPort
from gateway.errors import OutboxFull
from gateway.frontdoor import events as ev
from gateway.frontdoor.limits import FrontDoorLimits
from gateway.frontdoor.services import DeviceDirectory, MessageSink
from gateway.frontdoor.session import DeviceSession
from gateway.frontdoor.states import ConnState
from gateway.frontdoor.turns import ReadTurns
from gateway.metrics import Counters
from gateway.ratelimit import RateLimiter
from gateway.tls.contexts import ServerContextHolder
from gateway.tls.session import TLSFailed, TLSSession

log = logging.getLogger("edgegate.frontdoor")

# A read this big ends the device's turn: it goes to the back of the read-turn queue (gateway.frontdoor.turns)
# with nothing set aside, and its socket is read again when the queue comes round to it. uvloop (libuv)
# reads a ready socket up to 32 times in one loop iteration, so a device
# flooding messages the outbox refuses (which never fill its byte budget) was read megabytes at a time
# while every other device waited: bench.flood's fleet PUBACK p99 was 88-440 ms, 50-63 ms with
# asyncio's own loop, which reads each socket once per iteration. 64 KiB is far above what a device
# sends in one go (a reading, a window of 20 of them), and one read of a flood.
READ_TURN_BYTES = 64 * 1024


class ConnectionTable(Protocol):
    """The front door's table of connections and admitted devices."""

    def take_slot(self, conn: DeviceConnection) -> str | None:
        """Charge a new connection against the limits; the reason it is refused, or None."""

    def settle_charge(self, conn: DeviceConnection, keeps_openssl: bool) -> None:
        """The handshake is over: charge the connection what it keeps from now on."""

    def give_back_slot(self, conn: DeviceConnection) -> None: ...

    def admit(self, conn: DeviceConnection) -> None: ...

    def release(self, conn: DeviceConnection) -> None: ...


@dataclass(frozen=True, slots=True)
class Wiring:
    """What every connection needs from the gateway, handed over once by the front door."""

    table: ConnectionTable
    contexts: ServerContextHolder
    directory: DeviceDirectory
    sink: MessageSink
    port: BrokerPort
    limits: FrontDoorLimits
    counters: Counters
    clock: Callable[[], datetime]  # wall clock for certificate validity
    wallclock: Callable[[], float]  # seconds since the epoch for message timestamps
    tls_log_limiter: RateLimiter
    deny_log_limiter: RateLimiter
    turns: ReadTurns  # the share of each loop turn device reads may take
    spawn: Callable[[Coroutine[Any, Any, None]], object]  # schedules a coroutine as a tracked task


class DeviceConnection(asyncio.Protocol):
    """The front door's side of one TCP connection from a device."""

    __slots__ = ("_aside", "_granted", "_held", "_paused_writing", "_pump_soon", "_timer", "_timer_at",
                 "_write_waiters", "charge", "link", "loop", "remote", "session", "tls", "transport", "wiring")

    def __init__(self, wiring: Wiring, loop: asyncio.AbstractEventLoop) -> None:
        self.wiring = wiring
        self.loop = loop
        self.session = DeviceSession(wiring.limits, loop.time())
        self.transport: asyncio.Transport | None = None
        self.remote: tuple[str, int] = ("", 0)
        self.tls: TLSSession | None = None
        self.link: BrokerLink | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._pump_soon = False
        self._write_waiters: list[asyncio.Future[None]] = []
        self._paused_writing = False
        self._held = False  # the front door holds this device's reads (the forward pacer, the memory guard)
        # In the read-turn queue (gateway.frontdoor.turns): the bytes read meanwhile; None when not in it.
        self._aside: list[bytes] | None = None
        self._granted = False  # the read-turn queue granted the next read: it is handled without waiting
        self.charge = 0  # bytes of the connection budget this connection holds (ConnectionTable)

    @property
    def device_id(self) -> str | None:
        return self.session.device_id

    # ---- asyncio callbacks -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        peername = transport.get_extra_info("peername")
        self.remote = (str(peername[0]), int(peername[1])) if peername else ("", 0)
        w = self.wiring
        refusal = w.table.take_slot(self)
        if refusal is not None:
            # Counted here; the gateway logs one summary line per interval (gateway.runtime).
            w.counters.inc("edgegate_connections_refused_total", reason=refusal)
            self.transport.abort()
            self.session.finished()
            return
        self.tls = TLSSession(w.contexts.current)
        self._arm_timer()

    def data_received(self, data: bytes) -> None:
        if self._aside is not None:
            self._aside.append(data)
            return
        turns = self.wiring.turns
        if self._granted:
            self._granted = False
            turns.granted(len(data))
        elif self.session.state is ConnState.ONLINE and turns.must_wait():
            # This loop turn's reads are spent: wait in line, unread, so the rest of the gateway runs.
            # (Handshakes and CONNECTs never wait: their deadlines are seconds, and a device kept out
            # past them reconnects and costs its handshake again.)
            self._aside = [data]
            turns.wait(self)
            if self.transport is not None:
                self.transport.pause_reading()
            return
        self._handle(data)

    def take_turn(self) -> bool:
        """Our turn in the queue (gateway.frontdoor.turns): handle what was set aside, and read again. With
        nothing set aside (a hold let go, or a big read ended the last turn) the next read is granted: it is
        handled when it comes, without waiting in line again. False then."""
        handled = bool(self._aside)
        self._handle_aside()
        self._granted = not handled
        self._resume_reading()
        return handled

    def _handle_aside(self) -> None:
        """Bytes set aside come before whatever the connection says next (its end included)."""
        aside, self._aside = self._aside, None
        if aside:
            self._handle(aside[0] if len(aside) == 1 else b"".join(aside))

    def _handle(self, data: bytes) -> None:
        session, tls = self.session, self.tls
        if tls is None or session.state in (ConnState.CLOSING, ConnState.CLOSED):
            return
        now = self.loop.time()
        try:
            tls.receive(data)
            if session.state is ConnState.HANDSHAKING:
                if not tls.advance_handshake():
                    self._transmit()
                    return
                self.wiring.table.settle_charge(self, keeps_openssl=tls.records is None)
                session.handshake_completed(tls.peer_identity(self.remote), now)
            session.receive_data(tls.read(), now, self.wiring.wallclock())
            if tls.closed:
                session.peer_closed("peer closed TLS", self.wiring.wallclock())
        except TLSFailed as exc:
            stage = "handshake" if session.state is ConnState.HANDSHAKING else "record"
            w = self.wiring
            w.counters.inc("edgegate_tls_failures_total", stage=stage)
            if w.tls_log_limiter.allow(self.remote[0], now):
                log.info("TLS %s failed from %s:%d: %s", stage, *self.remote, exc)
            session.tls_failed(str(exc), w.wallclock())
        self._pump()
        if len(data) >= READ_TURN_BYTES and self._aside is None and self.transport is not None:
            # A big read ends this device's turn: to the back of the queue, with nothing set aside.
            self._aside = []
            self.wiring.turns.wait(self)
            self.transport.pause_reading()

    def hold(self, hold: bool) -> None:
        """Stop reading this device, while the forwarder catches up or memory is short; or read again, when
        the read-turn queue comes round to it (so a fleet let go at once is not read all in one turn)."""
        self._held = hold
        if hold:
            if self.transport is not None and not self.transport.is_closing():
                self.transport.pause_reading()
        elif self._aside is None and self.transport is not None and not self.transport.is_closing():
            self._aside = []
            self.wiring.turns.wait(self)

    def _resume_reading(self) -> None:
        """Read again, unless a reason to pause is still there: the session's budget, a place in the
        read-turn queue, or the front door's hold."""
        transport = self.transport
        if (transport is not None and not transport.is_closing() and not self.session.reading_paused
                and not self._held and self._aside is None):
            transport.resume_reading()

    def eof_received(self) -> bool | None:
        self._handle_aside()
        self.session.peer_closed("peer closed the connection", self.wiring.wallclock())
        self._pump()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._handle_aside()
        session = self.session
        if session.state is not ConnState.CLOSED:
            session.peer_closed("connection lost", self.wiring.wallclock())
            self._pump()
            session.finished()
        self._cancel_timer()
        self.wiring.table.give_back_slot(self)
        self.resume_writing()

    def pause_writing(self) -> None:
        self._paused_writing = True

    def resume_writing(self) -> None:
        self._paused_writing = False
        waiters, self._write_waiters = self._write_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # ---- the broker's side (gateway.broker.port.BrokerOutput) --------------------------------

    def send(self, data: bytes) -> None:
        self.session.broker_data(data)
        self._pump()

    def drain_waiter(self) -> asyncio.Future[None] | None:
        if not self._paused_writing:
            return None
        waiter: asyncio.Future[None] = self.loop.create_future()
        self._write_waiters.append(waiter)
        return waiter

    def broker_closed(self) -> None:
        self.session.broker_closed()
        self._pump()

    # ---- the gateway's side ------------------------------------------------------------------

    def kick(self, reason: str) -> None:
        """Close an admitted connection from the gateway's side (revocation, takeover, shutdown)."""
        if self.session.state is ConnState.ONLINE:
            log.info("disconnecting device=%s: %s", self.device_id, reason)
        self.session.kick(reason)
        self._pump()

    # ---- the pump ----------------------------------------------------------------------------

    def _pump(self) -> None:
        """Perform every pending event, send what the session has for the device, re-arm the timer."""
        self._pump_soon = False
        session = self.session
        while (event := session.next_event()) is not None:
            self._perform(event)
        self._transmit()
        self._arm_timer()

    def _pump_later(self) -> None:
        # Outbox commits resolve many futures in one loop iteration: pump once, so their PUBACKs
        # leave in one TLS record.
        if not self._pump_soon:
            self._pump_soon = True
            self.loop.call_soon(self._pump)

    def _perform(self, event: ev.Event) -> None:
        w, session = self.wiring, self.session
        if isinstance(event, ev.Submit):
            taken = w.sink.submit_many(event.messages)
            if taken.committed is not None:
                taken.committed.add_done_callback(partial(self._committed, event.ticket))
            if taken.accepted < len(event.messages):
                session.submit_refused(event.ticket, taken.accepted, taken.refusal or "refused")
        elif isinstance(event, ev.ToBroker):
            if self.link is not None:
                self.link.forward(event.data)
        elif isinstance(event, ev.LookupDevice):
            w.spawn(self._lookup(event))
        elif isinstance(event, ev.Decided):
            self._record_decision(event)
        elif isinstance(event, ev.OpenBroker):
            if w.port.has_leftover_clean_session(event.device_id, event.clean_session):
                w.spawn(self._forget_then_ready(event.device_id))
            else:
                session.broker_ready(w.port.filters_held(event.device_id), self.loop.time())
        elif isinstance(event, ev.Online):
            w.table.admit(self)
            self.link = w.port.attach(event.device_id, event.clean_session, self, self.remote)
        elif isinstance(event, ev.Close):
            self._close(event)
        elif isinstance(event, ev.PauseReading):
            if self.transport is not None:
                self.transport.pause_reading()
        elif isinstance(event, ev.ResumeReading):
            self._resume_reading()
        else:
            self._report(event)

    def _report(self, event: ev.Event) -> None:
        """Events that only count and log."""
        w, now = self.wiring, self.loop.time()
        if isinstance(event, ev.PublishDenied):
            w.counters.inc("edgegate_publish_denied_total", reason=event.reason)
            if w.deny_log_limiter.allow(event.device_id, now):
                log.warning("publish denied device=%s topic=%r reason=%s", event.device_id, event.topic, event.reason)
        elif isinstance(event, ev.SubscribeDenied):
            w.counters.inc("edgegate_subscribe_denied_total", amount=len(event.filters), reason=event.reason)
            if w.deny_log_limiter.allow(f"sub:{event.device_id}", now):
                log.warning("subscribe denied device=%s filters=%r reason=%s",
                            event.device_id, list(event.filters), event.reason)
        elif isinstance(event, ev.ProtocolViolation):
            w.counters.inc("edgegate_protocol_violations_total", reason=event.reason)
            if w.deny_log_limiter.allow(f"proto:{self.remote[0]}", now):
                log.warning("protocol violation from %s:%d device=%s reason=%s: %s",
                            *self.remote, self.device_id or "-", event.reason, event.detail)
        elif isinstance(event, ev.TimedOut):
            if event.stage == "keepalive":
                w.counters.inc("edgegate_keepalive_expired_total")
                log.info("keep-alive expired device=%s idle=%.1fs", self.device_id, event.seconds)
            else:
                w.counters.inc("edgegate_timeouts_total", stage=event.stage)
                log.info("closing %s:%d: no %s within %.1fs", *self.remote,
                         "TLS handshake" if event.stage == "handshake" else "CONNECT", event.seconds)
        elif isinstance(event, ev.PublishWill):
            try:
                w.sink.submit(event.message)
                w.counters.inc("edgegate_wills_published_total")
            except OutboxFull:
                w.counters.inc("edgegate_outbox_refused_total", qos="will")
        elif isinstance(event, ev.OutboxRefused):
            w.counters.inc("edgegate_outbox_refused_total", amount=event.count, qos=str(event.qos))
            if event.qos:
                # Not acknowledged, so not lost: the device keeps it and re-sends after reconnecting.
                log.warning("outbox full, disconnecting device=%s to push back: %s", self.device_id, event.detail)
        elif isinstance(event, ev.CommitFailed):
            log.error("outbox commit failed for device=%s; closing without PUBACK: %s",
                      self.device_id, event.failure)

    def _record_decision(self, event: ev.Decided) -> None:
        """One counter and, for a rejection, one log line naming device, thumbprint and reason."""
        decision, w = event.decision, self.wiring
        thumbprint = decision.thumbprint or "-"
        if decision.ok:
            w.counters.inc("edgegate_auth_accepted_total")
            log.info("admitted device=%s thumbprint=%s from %s:%d", decision.device_id, thumbprint, *self.remote)
            return
        w.counters.inc("edgegate_auth_rejected_total", reason=decision.reason.value)
        log.warning("rejected device=%s thumbprint=%s reason=%s from %s:%d: %s",
                    decision.device_id or "-", thumbprint, decision.reason.value, *self.remote, decision.message)
        if decision.detail:
            # The verifier's own words: for whoever debugs a PKI, not for the operator's log.
            log.debug("rejected device=%s: verifier said: %s", decision.device_id or "-", decision.detail)

    async def _lookup(self, event: ev.LookupDevice) -> None:
        directory = self.wiring.directory
        record = await directory.lookup_or_fetch(event.client_id) if event.fetch else None
        self.session.record_found(record, directory.auth_policy(), self.wiring.clock())
        self._pump()

    async def _forget_then_ready(self, device_id: str) -> None:
        port = self.wiring.port
        await port.forget_session(device_id)
        self.session.broker_ready(port.filters_held(device_id), self.loop.time())
        self._pump()

    def _committed(self, ticket: int, fut: asyncio.Future[None]) -> None:
        if fut.cancelled():
            self.session.commit_finished(ticket, False, "cancelled")
        elif (exc := fut.exception()) is not None:
            self.session.commit_finished(ticket, False, str(exc))
        else:
            self.session.commit_finished(ticket, True)
        if self.session.commits_awaited:
            self._pump_later()  # more of this device's submits may finish in this commit: one record for all
        else:
            self._pump()

    # ---- output and closing ------------------------------------------------------------------

    def _transmit(self) -> None:
        tls, transport = self.tls, self.transport
        if tls is None or transport is None:
            return
        data = self.session.data_to_send()
        if data:
            try:
                tls.write(data)
            except TLSFailed:
                transport.abort()
                return
        out = tls.outgoing()
        if out and not transport.is_closing():
            transport.write(out)

    def _close(self, event: ev.Close) -> None:
        self._transmit()  # a refusal's CONNACK, the last PUBACKs
        if event.was_online:
            if self.link is not None:
                self.link.close()
            self.wiring.table.release(self)
        transport = self.transport
        if transport is not None and not transport.is_closing():
            if event.abort or self.tls is None:
                transport.abort()
            else:
                self.tls.close()
                out = self.tls.outgoing()
                if out:
                    transport.write(out)
                transport.close()
        log.debug("closed %s:%d device=%s: %s", *self.remote, self.device_id or "-", event.why)

    def _arm_timer(self) -> None:
        at = self.session.get_timer()
        if at is None:
            self._cancel_timer()
            return
        # A timer already set to fire no later is kept: when it fires early, the session answers
        # nothing and the pump re-arms it (keep-alive moves with every packet; re-arming costs more).
        if self._timer is not None and self._timer_at is not None and self._timer_at <= at:
            return
        self._cancel_timer()
        self._timer_at = at
        self._timer = self.loop.call_at(at, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None
        self.session.handle_timer(self.loop.time(), self.wiring.wallclock())
        self._pump()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._timer_at = None

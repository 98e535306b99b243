"""One device connection: the asyncio shell that moves bytes between the socket, TLS, the pure
decisions and amqtt. Decisions live elsewhere (gateway.auth, gateway.mqtt); this file only wires.

Inbound path per packet (after CONNECT was admitted):
  PUBLISH      -> topic decision -> outbox.submit -> PUBACK after the durable commit, in order
  SUBSCRIBE    -> per-filter decision -> allowed filters forwarded to amqtt, denied ones get 0x80
  PINGREQ      -> answered here
  QoS 2        -> disconnect (as edgeHub does)
  the rest     -> forwarded to amqtt untouched (UNSUBSCRIBE, PUBACK of deliveries, DISCONNECT)
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, cast

from gateway.auth.decision import ConnectClaim, authenticate
from gateway.auth.identity import validate_device_id
from gateway.auth.topics import DeviceTopics
from gateway.broker.link import BrokerReader, BrokerWriter
from gateway.errors import OutboxFull, PacketTooLarge, ProtocolError
from gateway.frontdoor.states import PRE_ADMISSION, ConnState, advance
from gateway.mqtt import codec
from gateway.mqtt.packets import ConnackCode, Connect, PacketType
from gateway.records import InboundMessage
from gateway.tls.session import TLSFailed, TLSSession

if TYPE_CHECKING:
    from gateway.frontdoor.server import FrontDoor

log = logging.getLogger("edgegate.frontdoor")

# Unacknowledged QoS 1 publishes one connection may have waiting for the outbox before we stop
# reading from its socket. MQTT clients keep ~20 in flight (paho's default max_inflight); the margin
# covers `mosquitto_pub -l` bursts. Past it, TCP backpressure slows the device instead of our memory.
MAX_PENDING_ACKS = 1000

# Packets a client may pipeline behind CONNECT before it has its CONNACK (paho sends none).
MAX_EARLY_PACKETS = 32


class DeviceConnection(asyncio.Protocol):
    """The front door's side of one TCP connection from a device."""

    def __init__(self, door: FrontDoor) -> None:
        self.door = door
        self.state = ConnState.HANDSHAKING
        self.device_id: str | None = None
        self.transport: asyncio.Transport | None = None
        self.peer: tuple[str, int] = ("", 0)
        self.tls: TLSSession | None = None
        self.framer = codec.Framer(door.limits.max_packet_size)
        self.topics: DeviceTopics | None = None
        self.connect: Connect | None = None
        self.last_rx = 0.0
        self._deadline: asyncio.TimerHandle | None = None
        self._keepalive: asyncio.TimerHandle | None = None
        self._keepalive_limit = 0.0
        self._early: list[codec.RawPacket] = []
        self._acks: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._suback_plans: dict[int, codec.SubackPlan] = {}
        self._broker_reader: BrokerReader | None = None
        self._broker_task: asyncio.Task[None] | None = None
        self._clean_disconnect = False
        self._reading_paused = False
        self._write_waiters: list[asyncio.Future[None]] = []
        self._paused_writing = False

    # ---- asyncio callbacks -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        peername = transport.get_extra_info("peername")
        self.peer = (str(peername[0]), int(peername[1])) if peername else ("", 0)
        if not self.door.take_slot(self):
            self.door.counters.inc("edgegate_connections_refused_total", reason="max_connections")
            self.transport.abort()
            self.state = ConnState.CLOSED
            return
        self.tls = TLSSession(self.door.contexts.current)
        self.last_rx = self.door.loop.time()
        self._deadline = self.door.loop.call_later(self.door.limits.handshake_timeout, self._on_deadline)

    def data_received(self, data: bytes) -> None:
        if self.state in (ConnState.CLOSING, ConnState.CLOSED) or self.tls is None:
            return
        self.last_rx = self.door.loop.time()
        tls = self.tls
        try:
            tls.receive(data)
            if self.state is ConnState.HANDSHAKING:
                if not tls.advance_handshake():
                    self._flush()
                    return
                self.state = advance(self.state, ConnState.AWAITING_CONNECT)
            plaintext = tls.read()
            self._flush()
            if plaintext:
                self._on_plaintext(plaintext)
            if tls.closed and self.state not in (ConnState.CLOSING, ConnState.CLOSED):
                self._close("peer closed TLS", abnormal=not self._clean_disconnect)
        except TLSFailed as exc:
            stage = "handshake" if self.state is ConnState.HANDSHAKING else "record"
            self.door.counters.inc("edgegate_tls_failures_total", stage=stage)
            if self.door.tls_log_limiter.allow(self.peer[0], self.door.loop.time()):
                log.info("TLS %s failed from %s:%d: %s", stage, *self.peer, exc)
            self._abort()
        except PacketTooLarge as exc:
            self._protocol_violation("packet_too_large", exc.detail)
        except ProtocolError as exc:
            self._protocol_violation(exc.reason, exc.detail)

    def eof_received(self) -> bool | None:
        self._close("peer closed the connection", abnormal=not self._clean_disconnect)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state is not ConnState.CLOSED:
            self._close("connection lost", abnormal=not self._clean_disconnect)
        self._finish()

    def pause_writing(self) -> None:
        self._paused_writing = True

    def resume_writing(self) -> None:
        self._paused_writing = False
        waiters, self._write_waiters = self._write_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # ---- packets -----------------------------------------------------------------------------

    def _on_plaintext(self, data: bytes) -> None:
        self.framer.feed(data)
        while (packet := self.framer.next_packet()) is not None:
            if self.state is ConnState.ONLINE:
                self._on_packet(packet)
            elif self.state is ConnState.AWAITING_CONNECT:
                self._on_connect(packet)
            elif self.state is ConnState.AUTHENTICATING:
                if len(self._early) >= MAX_EARLY_PACKETS:
                    raise ProtocolError("too_many_early_packets", "packets sent before CONNACK")
                self._early.append(packet)
            else:
                return

    def _on_connect(self, packet: codec.RawPacket) -> None:
        if packet.type != PacketType.CONNECT:
            raise ProtocolError("connect_expected", f"first packet was type {packet.type}, not CONNECT")
        try:
            self.connect = codec.decode_connect(packet)
        except codec.UnsupportedProtocol as exc:
            self.door.counters.inc("edgegate_protocol_violations_total", reason=exc.reason)
            self._send(codec.encode_connack(ConnackCode.UNACCEPTABLE_PROTOCOL))
            self._close(exc.detail, abnormal=False)
            return
        self.state = advance(self.state, ConnState.AUTHENTICATING)
        self.door.spawn(self._admit(self.connect))

    async def _admit(self, connect: Connect) -> None:
        assert self.tls is not None
        door = self.door
        peer = self.tls.peer_identity(self.peer)
        claim = ConnectClaim(client_id=connect.client_id, username=connect.username)
        record = None
        if validate_device_id(connect.client_id) is None:
            record = await door.directory.lookup_or_fetch(connect.client_id)
        if self.state is not ConnState.AUTHENTICATING:
            return  # timed out or closed while we waited for the hub
        decision = authenticate(peer, claim, record, door.directory.auth_policy(), door.clock())
        if decision.ok and connect.will is not None:
            decision = door.check_will(decision, connect)
        door.record_decision(decision, peer, self.peer)
        if not decision.ok:
            self._send(codec.encode_connack(decision.reason.connack_code))
            self._close(f"rejected: {decision.reason.value}", abnormal=False)
            return
        await door.forget_clean_session(decision.device_id, connect.clean_session)
        if self.state is not ConnState.AUTHENTICATING:
            return
        self._go_online(decision.device_id, connect)

    def _go_online(self, device_id: str, connect: Connect) -> None:
        door = self.door
        self.state = advance(self.state, ConnState.ONLINE)
        self.device_id = device_id
        self.topics = DeviceTopics.for_device(device_id)
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._keepalive_limit = door.limits.keepalive_limit(connect.keep_alive)
        self._keepalive = door.loop.call_later(self._keepalive_limit, self._check_keepalive)
        door.admit(self)
        # amqtt gets a CONNECT we wrote: MQTT 3.1.1, no will (wills are ours), no keep-alive (enforced
        # here), and a one-time admission token in place of the password (see gateway.broker.admission).
        token = door.tokens.mint(device_id)
        forwarded = codec.encode_connect(
            client_id=device_id,
            clean_session=connect.clean_session,
            keep_alive=0,
            username=device_id,
            password=token.encode(),
        )
        self._broker_reader = BrokerReader()
        self._broker_reader.feed(forwarded)
        writer = BrokerWriter(self._send_from_broker, self._drain_waiter, self._broker_closed, self.peer)
        self._broker_task = door.spawn(door.attach_to_broker(self._broker_reader, writer))
        early, self._early = self._early, []
        try:
            for packet in early:
                self._on_packet(packet)
        except ProtocolError as exc:  # PacketTooLarge included
            self._protocol_violation(exc.reason, exc.detail)

    def _on_packet(self, packet: codec.RawPacket) -> None:
        kind = packet.type
        if kind == PacketType.PUBLISH:
            self._on_publish(packet)
        elif kind == PacketType.PINGREQ:
            self._send(codec.encode_pingresp())
        elif kind == PacketType.SUBSCRIBE:
            self._on_subscribe(packet)
        elif kind in _FORWARDED:
            if kind == PacketType.DISCONNECT:
                self._clean_disconnect = True
            assert self._broker_reader is not None
            self._broker_reader.feed(packet.raw)
        else:
            raise ProtocolError("unexpected_packet", f"packet type {kind} is not allowed from a client here")

    def _on_publish(self, packet: codec.RawPacket) -> None:
        publish = codec.decode_publish(packet)
        door = self.door
        if publish.qos == 2:
            raise ProtocolError("qos2_refused", "QoS 2 publishes are not supported (edgeHub refuses them too)")
        assert self.topics is not None
        assert self.device_id is not None
        decision = self.topics.classify_publish(publish.topic)
        if not decision.allowed:
            door.counters.inc("edgegate_publish_denied_total", reason=decision.reason)
            if door.deny_log_limiter.allow(self.device_id, door.loop.time()):
                log.warning(
                    "publish denied device=%s topic=%r reason=%s",
                    self.device_id, publish.topic[:200], decision.reason,
                )
            if publish.qos == 1 and publish.packet_id is not None:
                # MQTT 3.1.1 has no negative PUBACK; acknowledging keeps the device's in-flight window
                # moving, and the message is dropped and counted (as Mosquitto does for ACL denials).
                done: asyncio.Future[None] = door.loop.create_future()
                done.set_result(None)
                self._queue_ack(publish.packet_id, done)
            return
        message = InboundMessage(
            device_id=self.device_id,
            kind=decision.kind.value,
            topic=publish.topic,
            payload=publish.payload,
            qos=publish.qos,
            properties=tuple(decision.properties.items()),
            received_at=door.wallclock(),
        )
        try:
            committed = door.sink.submit(message)
        except OutboxFull as exc:
            door.counters.inc("edgegate_outbox_refused_total", qos=str(publish.qos))
            if publish.qos == 0:
                return
            # Not acknowledged, so not lost: the device keeps it and re-sends after reconnecting.
            log.warning("outbox full, disconnecting device=%s to push back: %s", self.device_id, exc)
            self._close("outbox full", abnormal=False)
            return
        if publish.qos == 1 and publish.packet_id is not None:
            self._queue_ack(publish.packet_id, committed)

    def _queue_ack(self, packet_id: int, committed: asyncio.Future[None]) -> None:
        self._acks.append((packet_id, committed))
        committed.add_done_callback(self._on_committed)
        if len(self._acks) >= MAX_PENDING_ACKS and not self._reading_paused and self.transport:
            self.transport.pause_reading()
            self._reading_paused = True

    def _on_committed(self, _fut: asyncio.Future[None]) -> None:
        # PUBACKs leave in PUBLISH order (MQTT-4.6.0-2), each only after its message is durable.
        out: list[bytes] = []
        acks = self._acks
        while acks and acks[0][1].done():
            packet_id, fut = acks.popleft()
            if fut.cancelled() or fut.exception() is not None:
                failure = "cancelled" if fut.cancelled() else str(fut.exception())
                log.error("outbox commit failed for device=%s; closing without PUBACK: %s",
                          self.device_id, failure)
                self._close("outbox commit failed", abnormal=False)
                return
            out.append(codec.encode_puback(packet_id))
        if out and self.state is ConnState.ONLINE:
            self._send(b"".join(out))
        if self._reading_paused and len(acks) < MAX_PENDING_ACKS // 2 and self.transport:
            self.transport.resume_reading()
            self._reading_paused = False

    def _on_subscribe(self, packet: codec.RawPacket) -> None:
        subscribe = codec.decode_subscribe(packet)
        assert self.topics is not None
        assert self._broker_reader is not None
        mask = [self.topics.authorize_subscribe(flt) for flt, _qos in subscribe.filters]
        denied = mask.count(False)
        if denied:
            self.door.counters.inc("edgegate_subscribe_denied_total", amount=denied)
            if self.door.deny_log_limiter.allow(f"sub:{self.device_id}", self.door.loop.time()):
                refused = [flt for (flt, _q), ok in zip(subscribe.filters, mask, strict=True) if not ok]
                log.warning("subscribe denied device=%s filters=%r", self.device_id, refused[:10])
        forward, plan = codec.split_subscribe(subscribe, mask)
        if forward is None:
            self._send(codec.encode_suback(subscribe.packet_id, [0x80] * len(mask)))
            return
        if plan is not None:
            self._suback_plans[subscribe.packet_id] = plan
        self._broker_reader.feed(forward)

    # ---- timers ------------------------------------------------------------------------------

    def _on_deadline(self) -> None:
        self._deadline = None
        if self.state in PRE_ADMISSION:
            stage = "handshake" if self.state is ConnState.HANDSHAKING else "connect"
            self.door.counters.inc("edgegate_timeouts_total", stage=stage)
            log.info("closing %s:%d: no %s within %.1fs", *self.peer,
                     "TLS handshake" if stage == "handshake" else "CONNECT", self.door.limits.handshake_timeout)
            self._abort()

    def _check_keepalive(self) -> None:
        self._keepalive = None
        if self.state is not ConnState.ONLINE:
            return
        idle = self.door.loop.time() - self.last_rx
        if idle >= self._keepalive_limit:
            self.door.counters.inc("edgegate_keepalive_expired_total")
            log.info("keep-alive expired device=%s idle=%.1fs", self.device_id, idle)
            self._close("keep-alive expired", abnormal=True)
            return
        self._keepalive = self.door.loop.call_later(self._keepalive_limit - idle, self._check_keepalive)

    # ---- output ------------------------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        if self.tls is None or self.transport is None or self.state is ConnState.CLOSED:
            return
        try:
            self.tls.write(data)
        except TLSFailed:
            self._abort()
            return
        self._flush()

    def _send_from_broker(self, data: bytes) -> None:
        if self._suback_plans and data[:1] == b"\x90":
            data = self._splice_suback(data)
        self._send(data)

    def _splice_suback(self, data: bytes) -> bytes:
        packet_id = int.from_bytes(data[2:4], "big") if len(data) >= 4 else -1
        plan = self._suback_plans.pop(packet_id, None)
        return data if plan is None else codec.splice_suback(data, plan)

    def _drain_waiter(self) -> asyncio.Future[None] | None:
        if not self._paused_writing:
            return None
        waiter: asyncio.Future[None] = self.door.loop.create_future()
        self._write_waiters.append(waiter)
        return waiter

    def _flush(self) -> None:
        if self.tls is None or self.transport is None:
            return
        out = self.tls.outgoing()
        if out and not self.transport.is_closing():
            self.transport.write(out)

    # ---- closing -----------------------------------------------------------------------------

    def kick(self, reason: str) -> None:
        """Close an admitted connection from the gateway's side (revocation, takeover, shutdown)."""
        if self.state is ConnState.ONLINE:
            log.info("disconnecting device=%s: %s", self.device_id, reason)
        self._close(reason, abnormal=False)

    def _protocol_violation(self, reason: str, detail: str) -> None:
        self.door.counters.inc("edgegate_protocol_violations_total", reason=reason)
        if self.door.deny_log_limiter.allow(f"proto:{self.peer[0]}", self.door.loop.time()):
            log.warning("protocol violation from %s device=%s reason=%s: %s",
                        f"{self.peer[0]}:{self.peer[1]}", self.device_id or "-", reason, detail)
        self._close(reason, abnormal=True)

    def _broker_closed(self) -> None:
        # amqtt asked to close (e.g. it refused the session): end the device's connection too.
        if self.state is ConnState.ONLINE:
            self._close("broker closed the session", abnormal=False)

    def _close(self, why: str, *, abnormal: bool) -> None:
        if self.state in (ConnState.CLOSING, ConnState.CLOSED):
            return
        was_online = self.state is ConnState.ONLINE
        self.state = advance(self.state, ConnState.CLOSING)
        self._cancel_timers()
        if was_online:
            if abnormal and self.connect is not None and self.connect.will is not None:
                self.door.publish_will(self, self.connect)
            if self._broker_reader is not None:
                self._broker_reader.feed_eof()
            self.door.release(self)
        if self.tls is not None and self.transport is not None and not self.transport.is_closing():
            self.tls.close()
            self._flush()
            self.transport.close()
        log.debug("closed %s:%d device=%s: %s", *self.peer, self.device_id or "-", why)

    def _abort(self) -> None:
        if self.state not in (ConnState.CLOSING, ConnState.CLOSED):
            self.state = advance(self.state, ConnState.CLOSING)
        self._cancel_timers()
        if self.transport is not None:
            self.transport.abort()

    def _cancel_timers(self) -> None:
        for handle in (self._deadline, self._keepalive):
            if handle is not None:
                handle.cancel()
        self._deadline = self._keepalive = None

    def _finish(self) -> None:
        if self.state is ConnState.CLOSING:
            self.state = advance(self.state, ConnState.CLOSED)
        self._cancel_timers()
        self.door.give_back_slot(self)
        self.resume_writing()


_FORWARDED = frozenset({
    PacketType.UNSUBSCRIBE,
    PacketType.PUBACK,
    PacketType.PUBREC,
    PacketType.PUBREL,
    PacketType.PUBCOMP,
    PacketType.DISCONNECT,
})


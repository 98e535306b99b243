"""One device connection as a sans-IO state machine (h11's Connection, aioquic's QuicConnection).

Plaintext MQTT bytes and the time go in; events (gateway.frontdoor.events) and bytes for the device
come out. No sockets, no TLS library, no event loop, no clock: the shell (connection.py) feeds it,
performs its events, writes `data_to_send()` and arms one timer at `get_timer()`.

    handshake_completed(peer, now)        TLS is up; the deadline armed at birth still runs
    receive_data(data, now, wall)         bytes from the device
    record_found(record, policy, now)     answer to LookupDevice; decides (gateway.auth.authenticate)
    broker_ready(held_filters, now)       answer to OpenBroker; the device goes online
    commit_finished(ticket, ok, failure)  answer to Submit; PUBACKs leave in PUBLISH order
    submit_refused(ticket, accepted, detail)  the outbox refused a Submit's messages from `accepted` on
    broker_data(data)                     a packet amqtt wrote for the device (SUBACKs are spliced)
    handle_timer(now, wall)               the deadline or keep-alive check
    kick(reason) / broker_closed() / tls_failed(detail, wall) / peer_closed(why, wall) / finished()

`now` is monotonic seconds (timers); `wall` is seconds since the epoch (message timestamps); the
decision's `now` is a datetime, because certificate validity is wall-clock time.

The PUBLISHes that arrive in one `receive_data` leave as one Submit (one ticket, one commit to wait
for): the per-message work is kept to framing, the topic check and building the message. A device
publishes to the same topic again and again, so a topic is decoded and classified only when its bytes
change.
"""

from __future__ import annotations

import struct
from dataclasses import replace
from datetime import datetime

from gateway.auth.decision import AuthDecision, AuthPolicy, ConnectClaim, authenticate
from gateway.auth.identity import validate_device_id
from gateway.auth.live import AdmittedChain
from gateway.auth.reasons import Reason
from gateway.auth.topics import DeviceTopics, PublishVerdict, TopicKind
from gateway.errors import ProtocolError
from gateway.frontdoor import events as ev
from gateway.frontdoor.limits import FrontDoorLimits
from gateway.frontdoor.states import PRE_ADMISSION, ConnState, advance
from gateway.mqtt import codec
from gateway.mqtt.packets import ConnackCode, Connect, PacketType, Will
from gateway.records import DeviceRecord, InboundMessage, PeerIdentity

# Packets the broker handles as the device sent them (after the session has seen them).
_FORWARDED = frozenset({
    PacketType.PUBACK,
    PacketType.PUBREC,
    PacketType.PUBREL,
    PacketType.PUBCOMP,
})

_PUBLISH = int(PacketType.PUBLISH)
_PUBACK = struct.Struct(">BBH")


class _Ack:
    """One PUBACK owed to the device, sent when it and everything before it is done."""

    __slots__ = ("done", "packet_id")

    def __init__(self, packet_id: int, done: bool) -> None:
        self.packet_id, self.done = packet_id, done


def check_will(decision: AuthDecision, will: Will) -> AuthDecision:
    """A will is a deferred publish: it must be one the device could send itself, as telemetry."""
    verdict = DeviceTopics.for_device(decision.device_id).classify_publish(will.topic)
    if verdict.allowed and verdict.kind is TopicKind.TELEMETRY and will.qos < 2:
        return decision
    return replace(
        decision,
        ok=False,
        reason=Reason.WILL_TOPIC_DENIED,
        message=f"will topic {will.topic!r} is not this device's telemetry topic",
    )


class DeviceSession:
    """The front door's side of one device connection, with no I/O."""

    # One per connected device: slots, and lists rather than deques (an empty deque is 0.6 KiB).
    __slots__ = (
        "_acks", "_batch", "_batch_bytes", "_batch_entries", "_clean_disconnect", "_deadline", "_early", "_events",
        "_filters", "_framer", "_held_before", "_keepalive_limit", "_last_rx", "_next_ticket", "_out", "_pending",
        "_pending_bytes", "_reading_paused", "_suback_plans", "_topic", "_wall", "admitted", "connect",
        "device_id", "limits", "peer", "state", "topics",
    )

    def __init__(self, limits: FrontDoorLimits, now: float) -> None:
        self.limits = limits
        self.state = ConnState.HANDSHAKING
        self.peer: PeerIdentity | None = None  # from the handshake until the decision
        self.admitted: AdmittedChain | None = None  # from the decision on: what the session sweep reads
        self.connect: Connect | None = None
        self.device_id: str | None = None
        self.topics: DeviceTopics | None = None
        self._framer = codec.Framer(limits.max_packet_size)
        self._events: list[ev.Event] = []
        self._out: list[bytes] = []
        self._deadline: float | None = now + limits.handshake_timeout
        self._last_rx = now
        self._keepalive_limit = 0.0
        self._wall = 0.0
        self._early: list[codec.RawPacket] = []
        self._acks: list[_Ack] = []
        # ticket -> (payload bytes, [(payload bytes, owed PUBACK or None for QoS 0)] per message)
        self._pending: dict[int, tuple[int, list[tuple[int, _Ack | None]]]] = {}
        self._batch: list[InboundMessage] = []  # PUBLISHes of this receive_data, not yet a Submit
        self._batch_entries: list[tuple[int, _Ack | None]] = []
        self._batch_bytes = 0  # payload bytes of _batch
        self._topic: tuple[bytes, str, PublishVerdict, str, tuple[tuple[str, str], ...]] | None = None
        self._pending_bytes = 0
        self._next_ticket = 0
        self._reading_paused = False
        self._suback_plans: dict[int, codec.SubackPlan] = {}
        self._filters: set[str] = set()
        self._held_before = 0
        self._clean_disconnect = False

    # ---- outputs -----------------------------------------------------------------------------

    def next_event(self) -> ev.Event | None:
        """The next thing the shell must do, or None."""
        return self._events.pop(0) if self._events else None

    def data_to_send(self) -> bytes:
        """Plaintext MQTT bytes for the device, in order; empty when there are none."""
        if not self._out:
            return b""
        out, self._out = self._out, []
        return out[0] if len(out) == 1 else b"".join(out)

    def get_timer(self) -> float | None:
        """When handle_timer must run next (monotonic seconds), or None."""
        if self.state in PRE_ADMISSION:
            return self._deadline
        if self.state is ConnState.ONLINE:
            return self._last_rx + self._keepalive_limit
        return None

    @property
    def reading_paused(self) -> bool:
        """Has the session asked the shell to stop reading (its byte or PUBACK budget is spent)?"""
        return self._reading_paused

    @property
    def commits_awaited(self) -> int:
        """Submits whose commit the session still waits for."""
        return len(self._pending)

    @property
    def pending_bytes(self) -> int:
        """Payload bytes accepted from the device and not yet committed by the outbox."""
        return self._pending_bytes

    # ---- inputs: the connection --------------------------------------------------------------

    def handshake_completed(self, peer: PeerIdentity, now: float) -> None:
        self.peer = peer
        self._last_rx = now
        self.state = advance(self.state, ConnState.AWAITING_CONNECT)

    def receive_data(self, data: bytes, now: float, wall: float) -> None:
        """Bytes from the device (possibly none: any TLS record counts as activity)."""
        if self.state in (ConnState.CLOSING, ConnState.CLOSED):
            return
        if self.state is ConnState.HANDSHAKING:
            raise RuntimeError("receive_data before handshake_completed")
        self._last_rx, self._wall = now, wall
        if not data:
            return
        framer = self._framer
        framer.feed(data)
        try:
            if self.state is ConnState.AWAITING_CONNECT and framer.first_type not in (None, PacketType.CONNECT):
                # Known from the first byte: waiting for the rest of a packet that is not a CONNECT would
                # only hold the connection open until the deadline (Mosquitto closes at once too).
                raise ProtocolError("connect_expected",
                                    f"first packet was type {framer.first_type}, not CONNECT")
            while packets := framer.take():
                if not self._consume(packets):
                    break
        except ProtocolError as exc:  # PacketTooLarge included
            self._violation(exc.reason, exc.detail)
        self._flush_batch()

    def _consume(self, packets: list[codec.RawPacket]) -> bool:
        """Handle framed packets in order; False once the connection stopped taking packets."""
        for packet in packets:
            state = self.state
            if state is ConnState.ONLINE:
                if packet.type == _PUBLISH:
                    self._on_publish(packet)
                else:
                    self._on_packet(packet)
            elif state is ConnState.AWAITING_CONNECT:
                self._on_connect(packet)
            elif state in (ConnState.AUTHENTICATING, ConnState.ATTACHING):
                if len(self._early) >= self.limits.max_early_packets:
                    raise ProtocolError("too_many_early_packets", "packets sent before CONNACK")
                self._early.append(packet)
            else:
                return False
        return True

    def handle_timer(self, now: float, wall: float) -> None:
        self._wall = wall
        if self.state in PRE_ADMISSION:
            if self._deadline is not None and now >= self._deadline:
                stage = {ConnState.HANDSHAKING: "handshake", ConnState.AWAITING_CONNECT: "connect"}.get(
                    self.state, "authentication")
                self._events.append(ev.TimedOut(stage, self.limits.handshake_timeout))
                self._close(f"no {stage} within the deadline", abnormal=False, abort=True)
        elif self.state is ConnState.ONLINE:
            idle = now - self._last_rx
            if idle >= self._keepalive_limit:
                self._events.append(ev.TimedOut("keepalive", idle))
                self._close("keep-alive expired", abnormal=True)

    def kick(self, reason: str) -> None:
        """Close from the gateway's side: revocation, takeover, shutdown. No will (the device did
        nothing wrong that a will reports)."""
        self._close(reason, abnormal=False)

    def tls_failed(self, detail: str, wall: float) -> None:
        self._wall = wall
        self._close(f"TLS failed: {detail}", abnormal=True, abort=True)

    def peer_closed(self, why: str, wall: float) -> None:
        """The device closed TLS or TCP, or the connection was lost."""
        self._wall = wall
        self._close(why, abnormal=not self._clean_disconnect)

    def finished(self) -> None:
        """The socket is gone: nothing more will happen."""
        if self.state is ConnState.CLOSED:
            return
        if self.state is not ConnState.CLOSING:
            self._close("connection finished", abnormal=not self._clean_disconnect)
        self.state = advance(self.state, ConnState.CLOSED)

    # ---- inputs: answers to events -----------------------------------------------------------

    def record_found(self, record: DeviceRecord | None, policy: AuthPolicy, now: datetime) -> None:
        """The answer to LookupDevice: decide, and either go on to the broker or refuse."""
        if self.state is not ConnState.AUTHENTICATING:
            return  # timed out or closed while the shell looked the device up
        assert self.connect is not None
        assert self.peer is not None
        connect = self.connect
        claim = ConnectClaim(client_id=connect.client_id, username=connect.username)
        decision = authenticate(self.peer, claim, record, policy, now)
        if decision.ok and connect.will is not None:
            decision = check_will(decision, connect.will)
        if decision.ok:
            self.admitted = AdmittedChain.of(self.peer)
        self.peer = None  # the parsed chain costs ~5 KiB per idle device; DER is all a live session needs
        self._events.append(ev.Decided(decision))
        if not decision.ok:
            self._out.append(codec.encode_connack(decision.reason.connack_code))
            self._close(f"rejected: {decision.reason.value}", abnormal=False)
            return
        self.device_id = decision.device_id
        self.state = advance(self.state, ConnState.ATTACHING)
        self._events.append(ev.OpenBroker(decision.device_id, connect.clean_session))

    def broker_ready(self, held_filters: int, now: float) -> None:
        """The answer to OpenBroker: the device is online; packets it pipelined are handled now.

        `held_filters` is how many topic filters a resumed persistent session already holds.
        """
        if self.state is not ConnState.ATTACHING:
            return
        assert self.connect is not None
        assert self.device_id is not None
        self.state = advance(self.state, ConnState.ONLINE)
        self._deadline = None
        self.topics = DeviceTopics.for_device(self.device_id)
        self._keepalive_limit = self.limits.keepalive_limit(self.connect.keep_alive)
        self._last_rx = max(self._last_rx, now)
        self._held_before = held_filters
        self._events.append(ev.Online(self.device_id, self.connect.clean_session))
        early, self._early = self._early, []
        try:
            for packet in early:
                if self.state is not ConnState.ONLINE:
                    break
                self._on_packet(packet)
        except ProtocolError as exc:
            self._violation(exc.reason, exc.detail)
        self._flush_batch()

    def commit_finished(self, ticket: int, ok: bool, failure: str = "") -> None:
        """The outbox stored (or failed to store) the messages of `ticket`."""
        nbytes, entries = self._pending.pop(ticket, (0, []))
        self._pending_bytes -= nbytes
        if self.state is not ConnState.ONLINE:
            return
        if not ok:
            self._events.append(ev.CommitFailed(ticket, failure))
            self._close("outbox commit failed", abnormal=False)
            return
        owed = False
        for _size, ack in entries:
            if ack is not None:
                ack.done = owed = True
        if owed:
            self._send_acks()
        if self._reading_paused:
            self._maybe_resume()

    def submit_refused(self, ticket: int, accepted: int, detail: str) -> None:
        """The outbox took the first `accepted` messages of `ticket` and refused the rest (OutboxFull).
        A refused QoS 1 message is not acknowledged, so not lost: the connection closes, and the device
        sends it again after reconnecting. Refused QoS 0 is dropped and counted."""
        nbytes, entries = self._pending.pop(ticket, (0, []))
        kept, refused = entries[:accepted], entries[accepted:]
        gone = sum(size for size, _ack in refused)
        self._pending_bytes -= gone
        if kept:
            self._pending[ticket] = (nbytes - gone, kept)
        owed = [ack for _size, ack in refused if ack is not None]
        if len(refused) > len(owed):
            self._events.append(ev.OutboxRefused(0, detail, len(refused) - len(owed)))
        if owed:
            self._events.append(ev.OutboxRefused(1, detail, len(owed)))
            for ack in owed:
                self._acks.remove(ack)
            self._close("outbox full", abnormal=False)
        else:
            self._maybe_resume()

    def broker_data(self, data: bytes) -> None:
        """One whole packet the broker wrote for the device."""
        if self.state in (ConnState.CLOSING, ConnState.CLOSED):
            return
        if self._suback_plans and data[:1] == b"\x90":
            plan = self._suback_plans.pop(codec.suback_packet_id(data) or -1, None)
            if plan is not None:
                data = codec.splice_suback(data, plan)
        self._out.append(data)

    def broker_closed(self) -> None:
        """The broker ended the session (it refused it, or another took it over)."""
        if self.state is ConnState.ONLINE:
            self._close("broker closed the session", abnormal=False)

    # ---- packets -----------------------------------------------------------------------------

    def _on_connect(self, packet: codec.RawPacket) -> None:
        if packet.type != PacketType.CONNECT:
            raise ProtocolError("connect_expected", f"first packet was type {packet.type}, not CONNECT")
        try:
            connect = codec.decode_connect(packet)
        except codec.UnsupportedProtocol as exc:
            self._events.append(ev.ProtocolViolation(exc.reason, exc.detail))
            self._out.append(codec.encode_connack(ConnackCode.UNACCEPTABLE_PROTOCOL))
            self._close(exc.detail, abnormal=False)
            return
        self.connect = connect
        self.state = advance(self.state, ConnState.AUTHENTICATING)
        fetch = validate_device_id(connect.client_id) is None
        self._events.append(ev.LookupDevice(connect.client_id, fetch))

    def _on_packet(self, packet: codec.RawPacket) -> None:
        kind = packet.type
        if kind == PacketType.PUBLISH:
            self._on_publish(packet)
        elif kind in _FORWARDED:
            self._events.append(ev.ToBroker(packet.raw))
        elif kind == PacketType.PINGREQ:
            self._out.append(codec.encode_pingresp())
        elif kind == PacketType.SUBSCRIBE:
            self._on_subscribe(packet)
        elif kind == PacketType.UNSUBSCRIBE:
            _packet_id, filters = codec.decode_unsubscribe(packet)
            self._filters.difference_update(filters)
            self._events.append(ev.ToBroker(packet.raw))
        elif kind == PacketType.DISCONNECT:
            self._clean_disconnect = True
            self._events.append(ev.ToBroker(packet.raw))
        else:
            raise ProtocolError("unexpected_packet", f"packet type {kind} is not allowed from a client here")

    def _on_publish(self, packet: codec.RawPacket) -> None:
        raw_topic, packet_id, payload = codec.split_publish(packet)
        flags = packet.flags
        if flags & 0x04:  # QoS 2 (QoS 3 was refused by split_publish)
            raise ProtocolError("qos2_refused", "QoS 2 publishes are not supported (edgeHub refuses them too)")
        cached = self._topic
        if cached is None or cached[0] != raw_topic:
            cached = self._topic = self._classify(raw_topic)
        _raw, topic, verdict, kind, properties = cached
        if not verdict.allowed:
            assert self.device_id is not None
            self._events.append(ev.PublishDenied(self.device_id, topic[:200], verdict.reason))
            if packet_id is not None:
                # MQTT 3.1.1 has no negative PUBACK; acknowledging keeps the device's in-flight window
                # moving, and the message is dropped and counted (as Mosquitto does for ACL denials).
                self._acks.append(_Ack(packet_id, True))
                self._send_acks()
            return
        # The retain flag travels with the message (the router makes it IoT Hub's mqtt-retain property);
        # device publishes never reach the broker, so nothing is ever retained.
        assert self.device_id is not None
        self._batch.append(InboundMessage(self.device_id, kind, topic, payload, 1 if packet_id else 0, properties,
                                          self._wall, bool(flags & 0x01)))
        ack = None
        if packet_id is not None:
            ack = _Ack(packet_id, False)
            self._acks.append(ack)
        size = len(payload)
        self._batch_entries.append((size, ack))
        self._batch_bytes += size
        self._pending_bytes += size
        if not self._reading_paused and (
            len(self._acks) >= self.limits.max_pending_acks or self._pending_bytes >= self.limits.max_pending_bytes
        ):
            self._reading_paused = True
            self._events.append(ev.PauseReading())

    def _classify(self, raw_topic: bytes) -> tuple[bytes, str, PublishVerdict, str, tuple[tuple[str, str], ...]]:
        """A topic's decoded name and verdict, kept for the next PUBLISH to the same topic bytes."""
        assert self.topics is not None
        topic = codec.publish_topic(raw_topic)
        verdict = self.topics.classify_publish(topic)
        return raw_topic, topic, verdict, verdict.kind.value, tuple(verdict.properties.items())

    def _flush_batch(self) -> None:
        """The PUBLISHes taken since the last flush become one Submit (one ticket, one commit)."""
        if not self._batch:
            return
        entries = self._batch_entries
        ticket = self._next_ticket = self._next_ticket + 1
        self._pending[ticket] = (self._batch_bytes, entries)
        self._batch_bytes = 0
        self._events.append(ev.Submit(ticket, tuple(self._batch)))
        self._batch, self._batch_entries = [], []

    def _on_subscribe(self, packet: codec.RawPacket) -> None:
        subscribe = codec.decode_subscribe(packet)
        assert self.topics is not None
        assert self.device_id is not None
        mask: list[bool] = []
        refused: list[str] = []
        over_limit = False
        for flt, _qos in subscribe.filters:
            ok = self.topics.authorize_subscribe(flt)
            if ok and flt not in self._filters:
                if self._held_before + len(self._filters) >= self.limits.max_subscriptions:
                    ok, over_limit = False, True
                else:
                    self._filters.add(flt)
            mask.append(ok)
            if not ok:
                refused.append(flt)
        if refused:
            reason = "subscription_limit" if over_limit else "topic_not_allowed"
            self._events.append(ev.SubscribeDenied(self.device_id, tuple(refused[:10]), reason))
        forward, plan = codec.split_subscribe(subscribe, mask)
        if forward is None:
            self._out.append(codec.encode_suback(subscribe.packet_id, [codec.SUBACK_FAILURE] * len(mask)))
            return
        if plan is not None:
            self._suback_plans[subscribe.packet_id] = plan
        self._events.append(ev.ToBroker(forward))

    # ---- helpers -----------------------------------------------------------------------------

    def _send_acks(self) -> None:
        # PUBACKs leave in PUBLISH order (MQTT-4.6.0-2), each only after its message is durable.
        acks, out, pack = self._acks, self._out, _PUBACK.pack
        done = 0
        while done < len(acks) and acks[done].done:
            out.append(pack(0x40, 2, acks[done].packet_id))
            done += 1
        if done:
            del acks[:done]

    def _maybe_resume(self) -> None:
        if self._reading_paused and len(self._acks) < self.limits.max_pending_acks // 2 and (
            self._pending_bytes < self.limits.max_pending_bytes // 2
        ):
            self._reading_paused = False
            self._events.append(ev.ResumeReading())

    def _violation(self, reason: str, detail: str) -> None:
        self._events.append(ev.ProtocolViolation(reason, detail))
        self._close(reason, abnormal=True)

    def _close(self, why: str, *, abnormal: bool, abort: bool = False) -> None:
        if self.state in (ConnState.CLOSING, ConnState.CLOSED):
            return
        self._flush_batch()  # what was accepted before the close is still stored, as before it
        was_online = self.state is ConnState.ONLINE
        self.state = advance(self.state, ConnState.CLOSING)
        self._early.clear()
        self._suback_plans.clear()
        if was_online and abnormal and self.connect is not None and self.connect.will is not None:
            self._events.append(ev.PublishWill(self._will_message(self.connect.will)))
        self._events.append(ev.Close(why, abort, was_online))

    def _will_message(self, will: Will) -> InboundMessage:
        assert self.device_id is not None
        verdict = DeviceTopics.for_device(self.device_id).classify_publish(will.topic)
        return InboundMessage(
            device_id=self.device_id,
            kind=verdict.kind.value,
            topic=will.topic,
            payload=will.payload,
            qos=will.qos,
            properties=tuple(verdict.properties.items()),
            received_at=self._wall,
        )

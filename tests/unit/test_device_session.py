"""DeviceSession alone: bytes and time in, events and bytes out. No sockets, no TLS, no event loop.

A `Pair` plays the shell: it completes the handshake with a peer from the certificate matrix,
answers LookupDevice with the row's record, OpenBroker with broker_ready, and Submit with commits the
test controls. Device packets are encoded with the project's codec and fed whole or byte by byte.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

import pytest

from gateway.auth.decision import AuthPolicy
from gateway.auth.reasons import Reason
from gateway.frontdoor import events as ev
from gateway.frontdoor.limits import FrontDoorLimits
from gateway.frontdoor.session import DeviceSession
from gateway.frontdoor.states import ALLOWED, ConnState, IllegalTransition, advance
from gateway.mqtt import codec
from gateway.mqtt.packets import ConnackCode, PacketType
from gateway.records import DeviceRecord
from tests import certmatrix
from tests.unit.test_decision import MATRIX, peer_for

OK_ROW = MATRIX.by_name("thumbprint primary sha256")
DEVICE = OK_ROW.client_id
TELEMETRY = f"devices/{DEVICE}/messages/events/"
WALL = 1_800_000_000.0


def parse_out(data: bytes) -> list[codec.RawPacket]:
    framer = codec.Framer(1 << 20)
    framer.feed(data)
    packets = []
    while (p := framer.next_packet()) is not None:
        packets.append(p)
    assert framer.buffered == 0
    return packets


def connect_packet(client_id: str = DEVICE, *, keep_alive: int = 60, clean: bool = True,
                   will_topic: str | None = None) -> bytes:
    raw = codec.encode_connect(client_id=client_id, clean_session=clean, keep_alive=keep_alive)
    if will_topic is None:
        return raw
    # Rebuild with a will: flags bit 2 (will), QoS 1 (bits 3-4).
    body = bytearray(raw[2:])
    body[7] |= 0x04 | 0x08
    tail = body[10 + 2 + len(client_id.encode()):]
    head = body[:10 + 2 + len(client_id.encode())]
    will = len(will_topic).to_bytes(2, "big") + will_topic.encode() + b"\x00\x04gone"
    return codec._packet(0x10, bytes(head) + will + bytes(tail))


@dataclass
class Pair:
    """A DeviceSession with a scripted shell around it."""

    limits: FrontDoorLimits = field(default_factory=FrontDoorLimits)
    row: certmatrix.Row = OK_ROW
    now: float = 100.0
    session: DeviceSession = field(init=False)
    events: list[ev.Event] = field(default_factory=list)
    to_device: list[codec.RawPacket] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.session = DeviceSession(self.limits, self.now)

    def drain(self) -> list[ev.Event]:
        new = []
        while (e := self.session.next_event()) is not None:
            new.append(e)
        self.events += new
        self.to_device += parse_out(self.session.data_to_send())
        return new

    def handshake(self) -> None:
        self.session.handshake_completed(peer_for(self.row), self.now)

    def feed(self, data: bytes, *, bytewise: bool = False) -> list[ev.Event]:
        chunks = [data[i:i + 1] for i in range(len(data))] if bytewise else [data]
        for chunk in chunks:
            self.session.receive_data(chunk, self.now, WALL)
        return self.drain()

    def answer_lookup(self, records: tuple[DeviceRecord, ...] | None = None) -> list[ev.Event]:
        lookup = next(e for e in self.events if isinstance(e, ev.LookupDevice))
        by_id = {r.device_id: r for r in (self.row.records if records is None else records)}
        policy = AuthPolicy(certmatrix.GATEWAY_ID, MATRIX.anchors, timedelta(minutes=5))
        self.session.record_found(by_id.get(lookup.client_id), policy, certmatrix.NOW)
        return self.drain()

    def go_online(self, *, bytewise: bool = False, held: int = 0, **connect_kw: object) -> None:
        self.handshake()
        self.feed(connect_packet(**connect_kw), bytewise=bytewise)  # type: ignore[arg-type]
        self.answer_lookup()
        assert any(isinstance(e, ev.OpenBroker) for e in self.events)
        self.session.broker_ready(held, self.now)
        self.drain()
        assert self.session.state is ConnState.ONLINE
        self.session.broker_data(codec.encode_connack(0))
        self.drain()

    def of(self, kind: type) -> list:  # type: ignore[type-arg]
        return [e for e in self.events if isinstance(e, kind)]

    def sent(self, kind: PacketType) -> list[codec.RawPacket]:
        return [p for p in self.to_device if p.type == kind]


# ---- the state table -------------------------------------------------------------------------


@pytest.mark.parametrize("current", list(ConnState), ids=lambda s: s.value)
def test_state_table_allows_exactly_its_moves(current: ConnState) -> None:
    for wanted in ConnState:
        if wanted in ALLOWED[current]:
            assert advance(current, wanted) is wanted
        else:
            with pytest.raises(IllegalTransition) as info:
                advance(current, wanted)
            assert current.value in str(info.value)
            assert "allowed:" in str(info.value)


def test_every_state_but_closed_can_close_and_closed_is_final() -> None:
    for state in ConnState:
        if state is ConnState.CLOSED:
            assert ALLOWED[state] == frozenset()
        elif state is ConnState.CLOSING:
            assert ALLOWED[state] == {ConnState.CLOSED}
        else:
            assert ConnState.CLOSING in ALLOWED[state]


def test_receive_before_handshake_is_a_shell_bug() -> None:
    pair = Pair()
    with pytest.raises(RuntimeError):
        pair.session.receive_data(b"\x10", pair.now, WALL)


# ---- admission over the certificate matrix ---------------------------------------------------


@pytest.mark.parametrize("row", MATRIX.rows, ids=lambda r: r.name)
@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
def test_matrix_row_through_the_session(row: certmatrix.Row, bytewise: bool) -> None:
    pair = Pair(row=row)
    pair.handshake()
    raw = codec.encode_connect(client_id=row.client_id, clean_session=True, keep_alive=30, username=row.username)
    pair.feed(raw, bytewise=bytewise)
    assert pair.session.state is ConnState.AUTHENTICATING
    pair.answer_lookup()
    decided = pair.of(ev.Decided)
    assert len(decided) == 1
    assert decided[0].decision.reason is row.expected
    if row.expected is Reason.OK:
        assert pair.of(ev.OpenBroker) == [ev.OpenBroker(row.client_id, True)]
        assert pair.to_device == []  # the CONNACK comes from the broker session
        assert pair.session.state is ConnState.ATTACHING
    else:
        (connack,) = pair.sent(PacketType.CONNACK)
        assert connack.body[1] == row.expected.connack_code
        assert pair.of(ev.OpenBroker) == []
        assert pair.of(ev.Close)[0].was_online is False
        assert pair.session.state is ConnState.CLOSING


def test_invalid_client_id_is_decided_without_a_hub_fetch() -> None:
    pair = Pair()
    pair.handshake()
    pair.feed(connect_packet("bad/id#"))
    assert pair.of(ev.LookupDevice) == [ev.LookupDevice("bad/id#", fetch=False)]


def test_unsupported_protocol_gets_connack_1() -> None:
    pair = Pair()
    pair.handshake()
    raw = bytearray(connect_packet())
    raw[8] = 5  # protocol level 5
    pair.feed(bytes(raw))
    (connack,) = pair.sent(PacketType.CONNACK)
    assert connack.body[1] == ConnackCode.UNACCEPTABLE_PROTOCOL
    assert pair.session.state is ConnState.CLOSING


def test_first_packet_must_be_connect() -> None:
    pair = Pair()
    pair.handshake()
    pair.feed(codec.encode_pingresp())
    assert pair.of(ev.ProtocolViolation)[0].reason == "connect_expected"
    assert pair.of(ev.Close)


@pytest.mark.parametrize(("first", "why"), [
    (b"\x00", "type 0 is reserved"),
    (b"\x30", "a PUBLISH before any CONNECT"),
    (b"\xc0", "a PINGREQ before any CONNECT"),
    (b"\x00\xff", "garbage announcing a 127-byte packet: the gateway must not wait for the rest"),
])
def test_a_first_byte_that_cannot_start_a_connect_closes_at_once(first: bytes, why: str) -> None:
    pair = Pair()
    pair.handshake()
    pair.feed(first)
    assert pair.of(ev.ProtocolViolation)[0].reason == "connect_expected", why
    assert pair.of(ev.Close), why
    assert pair.session.state is ConnState.CLOSING, why


def test_a_connect_byte_by_byte_is_not_mistaken_for_garbage() -> None:
    pair = Pair()
    pair.handshake()
    pair.feed(connect_packet(), bytewise=True)
    assert not pair.of(ev.ProtocolViolation)
    assert pair.of(ev.LookupDevice)


def test_answers_after_close_are_ignored() -> None:
    pair = Pair()
    pair.handshake()
    pair.feed(connect_packet())
    pair.session.kick("shutdown")
    pair.drain()
    pair.answer_lookup()
    assert pair.of(ev.Decided) == []
    pair.session.broker_ready(0, pair.now)
    assert pair.session.state is ConnState.CLOSING


def test_will_outside_own_telemetry_is_refused() -> None:
    pair = Pair()
    pair.handshake()
    pair.feed(connect_packet(will_topic="devices/someone-else/messages/events/"))
    pair.answer_lookup()
    assert pair.of(ev.Decided)[0].decision.reason is Reason.WILL_TOPIC_DENIED


# ---- early packets ---------------------------------------------------------------------------


def test_packets_pipelined_behind_connect_are_handled_once_online() -> None:
    pair = Pair()
    pair.handshake()
    burst = connect_packet() + codec.encode_publish(TELEMETRY, b"early", qos=1, packet_id=7)
    pair.feed(burst)
    pair.answer_lookup()
    assert pair.of(ev.Submit) == []
    pair.session.broker_ready(0, pair.now)
    events = pair.drain()
    kinds = [type(e) for e in events]
    assert kinds.index(ev.Online) < kinds.index(ev.Submit)


def test_too_many_early_packets_is_a_violation() -> None:
    pair = Pair(limits=FrontDoorLimits(max_early_packets=2))
    pair.handshake()
    pair.feed(connect_packet() + b"\xc0\x00" * 3)  # three PINGREQs before the CONNACK
    assert pair.of(ev.ProtocolViolation)[0].reason == "too_many_early_packets"


# ---- publish and PUBACK ----------------------------------------------------------------------


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
def test_pubacks_leave_in_publish_order_only_after_commit(bytewise: bool) -> None:
    pair = Pair()
    pair.go_online()
    for i in (1, 2, 3):  # three reads, three Submits (one read's PUBLISHes share one: see the next test)
        pair.feed(codec.encode_publish(TELEMETRY, b"m%d" % i, qos=1, packet_id=i), bytewise=bytewise)
    submits = pair.of(ev.Submit)
    assert [[m.payload for m in s.messages] for s in submits] == [[b"m1"], [b"m2"], [b"m3"]]
    assert all(m.received_at == WALL and m.kind == "telemetry" for s in submits for m in s.messages)
    pair.session.commit_finished(submits[2].ticket, True)
    pair.session.commit_finished(submits[1].ticket, True)
    pair.drain()
    assert pair.sent(PacketType.PUBACK) == []  # the first is not durable yet
    pair.session.commit_finished(submits[0].ticket, True)
    pair.drain()
    assert [int.from_bytes(p.body, "big") for p in pair.sent(PacketType.PUBACK)] == [1, 2, 3]


def test_one_read_is_one_submit_and_its_pubacks_leave_together() -> None:
    pair = Pair()
    pair.go_online()
    data = b"".join(codec.encode_publish(TELEMETRY, b"m%d" % i, qos=i % 2, packet_id=i if i % 2 else None)
                    for i in range(1, 6))
    pair.feed(data)
    (submit,) = pair.of(ev.Submit)
    assert [m.payload for m in submit.messages] == [b"m1", b"m2", b"m3", b"m4", b"m5"]
    assert [m.qos for m in submit.messages] == [1, 0, 1, 0, 1]
    assert pair.session.pending_bytes == 10
    pair.session.commit_finished(submit.ticket, True)
    pair.drain()
    assert [int.from_bytes(p.body, "big") for p in pair.sent(PacketType.PUBACK)] == [1, 3, 5]
    assert pair.session.pending_bytes == 0


def test_a_topic_is_decoded_and_checked_again_whenever_its_bytes_change() -> None:
    pair = Pair()
    pair.go_online()
    other = "devices/someone-else/messages/events/"
    pair.feed(b"".join(codec.encode_publish(t, b"x", qos=1, packet_id=n)
                       for n, t in enumerate((TELEMETRY, other, TELEMETRY + "a=1", TELEMETRY), start=1)))
    (submit,) = pair.of(ev.Submit)
    assert [m.topic for m in submit.messages] == [TELEMETRY, TELEMETRY + "a=1", TELEMETRY]
    assert [m.properties for m in submit.messages] == [(), (("a", "1"),), ()]
    assert [e.reason for e in pair.of(ev.PublishDenied)] == ["other_device"]
    pair.feed(codec.encode_publish("devices/x/+/y", b"x", qos=0))
    assert pair.of(ev.ProtocolViolation)[0].reason == "wildcard_in_topic"


def test_the_outbox_taking_part_of_a_read_acks_that_part_and_closes_for_the_rest() -> None:
    pair = Pair()
    pair.go_online()
    pair.feed(b"".join(codec.encode_publish(TELEMETRY, b"m%d" % i, qos=1, packet_id=i) for i in (1, 2, 3)))
    (submit,) = pair.of(ev.Submit)
    pair.session.submit_refused(submit.ticket, 1, "outbox full")
    pair.drain()
    assert [(e.qos, e.count) for e in pair.of(ev.OutboxRefused)] == [(1, 2)]
    assert pair.session.state is ConnState.CLOSING
    assert pair.session.pending_bytes == 2  # m1 is still on its way to the disk
    pair.session.commit_finished(submit.ticket, True)
    assert pair.session.pending_bytes == 0


def test_a_failed_commit_never_pubacks_and_closes() -> None:
    pair = Pair()
    pair.go_online()
    pair.feed(codec.encode_publish(TELEMETRY, b"x", qos=1, packet_id=9))
    (submit,) = pair.of(ev.Submit)
    pair.session.commit_finished(submit.ticket, False, "database or disk is full")
    pair.drain()
    assert pair.sent(PacketType.PUBACK) == []
    assert pair.of(ev.CommitFailed)[0].failure == "database or disk is full"
    assert pair.of(ev.Close)[0].abort is False
    assert pair.of(ev.PublishWill) == []


def test_outbox_refusal_of_qos1_closes_without_puback_qos0_goes_on() -> None:
    pair = Pair()
    pair.go_online()
    pair.feed(codec.encode_publish(TELEMETRY, b"q0", qos=0))
    pair.session.submit_refused(pair.of(ev.Submit)[0].ticket, 0, "outbox full")
    pair.drain()
    assert pair.session.state is ConnState.ONLINE
    pair.feed(codec.encode_publish(TELEMETRY, b"q1", qos=1, packet_id=3))
    pair.session.submit_refused(pair.of(ev.Submit)[1].ticket, 0, "outbox full")
    pair.drain()
    assert [e.qos for e in pair.of(ev.OutboxRefused)] == [0, 1]
    assert pair.sent(PacketType.PUBACK) == []
    assert pair.session.state is ConnState.CLOSING


def test_denied_publish_is_acked_in_order_and_reported() -> None:
    pair = Pair()
    pair.go_online()
    pair.feed(codec.encode_publish(TELEMETRY, b"ok", qos=1, packet_id=1)
              + codec.encode_publish("devices/other/messages/events/", b"no", qos=1, packet_id=2))
    assert [e.reason for e in pair.of(ev.PublishDenied)] != []
    assert [len(s.messages) for s in pair.of(ev.Submit)] == [1]
    pair.drain()
    assert pair.sent(PacketType.PUBACK) == []  # 2 waits behind 1
    pair.session.commit_finished(pair.of(ev.Submit)[0].ticket, True)
    pair.drain()
    assert [int.from_bytes(p.body, "big") for p in pair.sent(PacketType.PUBACK)] == [1, 2]


@pytest.mark.parametrize(("packet", "reason"), [
    (codec.encode_publish(TELEMETRY, b"x", qos=2, packet_id=1), "qos2_refused"),
    (codec.encode_publish(f"devices/{DEVICE}/messages/events/+", b"x"), "wildcard_in_topic"),
    (codec.encode_publish(f"devices/{DEVICE}/messages/#", b"x"), "wildcard_in_topic"),
    (codec.encode_connect(client_id=DEVICE, clean_session=True, keep_alive=5), "unexpected_packet"),
    (b"\x20\x02\x00\x00", "unexpected_packet"),  # CONNACK from a client
])
def test_protocol_violations_close_abnormally(packet: bytes, reason: str) -> None:
    pair = Pair()
    pair.go_online(will_topic=TELEMETRY)
    pair.feed(packet)
    assert pair.of(ev.ProtocolViolation)[0].reason == reason
    assert pair.of(ev.PublishWill)[0].message.topic == TELEMETRY
    assert pair.of(ev.Close)[0].was_online is True


def test_packet_over_the_limit_is_refused_before_it_is_buffered() -> None:
    pair = Pair(limits=FrontDoorLimits(max_packet_size=1024))
    pair.go_online()
    pair.feed(b"\x30\xff\xff\x03")  # announces ~64 KiB
    assert pair.of(ev.ProtocolViolation)[0].reason == "packet_too_large"


def test_retain_flag_travels_as_a_property_never_retained() -> None:
    pair = Pair()
    pair.go_online()
    pair.feed(codec.encode_publish(TELEMETRY, b"r", qos=0, retain=True))
    (submit,) = pair.of(ev.Submit)
    assert submit.messages[0].retain is True
    assert pair.of(ev.ToBroker) == []  # device publishes never reach the broker


# ---- backpressure ----------------------------------------------------------------------------


def test_reading_pauses_over_the_byte_budget_qos0_included_and_resumes_at_half() -> None:
    pair = Pair(limits=FrontDoorLimits(max_pending_bytes=1000))
    pair.go_online()
    for _ in range(5):
        pair.feed(codec.encode_publish(TELEMETRY, b"x" * 250, qos=0))
    assert len(pair.of(ev.PauseReading)) == 1
    assert pair.session.pending_bytes == 1250
    tickets = [s.ticket for s in pair.of(ev.Submit)]
    for ticket in tickets[:3]:
        pair.session.commit_finished(ticket, True)
    pair.drain()
    assert pair.of(ev.ResumeReading) == []  # 500 is not under half of 1000
    pair.session.commit_finished(tickets[3], True)
    pair.drain()
    assert len(pair.of(ev.ResumeReading)) == 1


def test_reading_pauses_at_the_pending_ack_limit() -> None:
    pair = Pair(limits=FrontDoorLimits(max_pending_acks=4))
    pair.go_online()
    pair.feed(b"".join(codec.encode_publish(TELEMETRY, b"x", qos=1, packet_id=i) for i in range(1, 5)))
    assert len(pair.of(ev.PauseReading)) == 1


# ---- subscribe and SUBACK splicing -----------------------------------------------------------


def own_filter(n: int) -> str:
    return f"devices/{DEVICE}/messages/devicebound/{n}"


@pytest.mark.parametrize(("count", "length_bytes"), [(3, 1), (126, 2), (20_000, 3)],
                         ids=["1-byte", "2-byte", "3-byte"])
def test_suback_splice_at_every_remaining_length_size(count: int, length_bytes: int) -> None:
    pair = Pair(limits=FrontDoorLimits(max_subscriptions=count + 1, max_packet_size=1 << 20))
    pair.go_online()
    filters = [(own_filter(i), 1) for i in range(count)]
    filters.insert(1, ("devices/someone-else/messages/devicebound/#", 1))
    pair.feed(codec.encode_subscribe(0x1234, filters))
    (forward,) = pair.of(ev.ToBroker)
    forwarded = codec.decode_subscribe(parse_out(forward.data)[0])
    assert len(forwarded.filters) == count
    broker_suback = codec.encode_suback(0x1234, [1] * count)
    pair.session.broker_data(broker_suback)
    pair.drain()
    (suback,) = pair.sent(PacketType.SUBACK)
    assert len(suback.raw) - len(suback.body) == 1 + length_bytes
    codes = list(suback.body[2:])
    assert int.from_bytes(suback.body[:2], "big") == 0x1234
    assert len(codes) == count + 1
    assert codes[1] == 0x80
    assert codes.count(1) == count


def test_suback_with_nothing_allowed_is_answered_here() -> None:
    pair = Pair()
    pair.go_online()
    pair.feed(codec.encode_subscribe(5, [("#", 0), ("$SYS/#", 0)]))
    assert pair.of(ev.ToBroker) == []
    (suback,) = pair.sent(PacketType.SUBACK)
    assert list(suback.body[2:]) == [0x80, 0x80]
    assert pair.of(ev.SubscribeDenied)[0].reason == "topic_not_allowed"


def test_subscription_cap_counts_filters_a_resumed_session_holds() -> None:
    pair = Pair(limits=FrontDoorLimits(max_subscriptions=4))
    pair.go_online(held=2, clean=False)
    pair.feed(codec.encode_subscribe(1, [(own_filter(i), 1) for i in range(3)]))
    (denied,) = pair.of(ev.SubscribeDenied)
    assert denied.reason == "subscription_limit"
    assert denied.filters == (own_filter(2),)
    pair.feed(codec.encode_unsubscribe(2, [own_filter(0)]))
    pair.feed(codec.encode_subscribe(3, [(own_filter(2), 1)]))
    assert len(pair.of(ev.SubscribeDenied)) == 1  # the unsubscribe made room


def test_pingreq_is_answered_here_and_acks_of_deliveries_go_to_the_broker() -> None:
    pair = Pair()
    pair.go_online()
    pair.feed(b"\xc0\x00" + b"\x40\x02\x00\x05")
    assert len(pair.sent(PacketType.PINGRESP)) == 1
    assert [e.data for e in pair.of(ev.ToBroker)] == [b"\x40\x02\x00\x05"]


# ---- timers, wills, closing ------------------------------------------------------------------


def test_handshake_deadline_aborts_without_a_will() -> None:
    pair = Pair(limits=FrontDoorLimits(handshake_timeout=10))
    assert pair.session.get_timer() == pair.now + 10
    pair.session.handle_timer(pair.now + 9.9, WALL)
    assert pair.drain() == []
    pair.session.handle_timer(pair.now + 10, WALL)
    pair.drain()
    assert pair.of(ev.TimedOut) == [ev.TimedOut("handshake", 10)]
    assert pair.of(ev.Close)[0].abort is True


def test_connect_deadline_covers_a_slow_lookup() -> None:
    pair = Pair(limits=FrontDoorLimits(handshake_timeout=10))
    pair.handshake()
    pair.feed(connect_packet())
    pair.session.handle_timer(pair.now + 11, WALL)
    pair.drain()
    assert pair.of(ev.TimedOut)[0].stage == "authentication"


def test_keepalive_expiry_publishes_the_will() -> None:
    pair = Pair()
    pair.go_online(keep_alive=20, will_topic=TELEMETRY)
    assert pair.session.get_timer() == pair.now + 30  # 1.5 x keep-alive
    pair.now += 25
    pair.feed(b"\xc0\x00")
    assert pair.session.get_timer() == pair.now + 30
    pair.session.handle_timer(pair.now + 29, WALL)
    assert pair.drain() == []
    pair.session.handle_timer(pair.now + 30, WALL)
    pair.drain()
    assert pair.of(ev.TimedOut)[0].stage == "keepalive"
    assert pair.of(ev.PublishWill)[0].message.payload == b"gone"


def test_clean_disconnect_suppresses_the_will_and_kick_never_sends_one() -> None:
    pair = Pair()
    pair.go_online(will_topic=TELEMETRY)
    pair.feed(b"\xe0\x00")
    pair.session.peer_closed("peer closed", WALL)
    pair.drain()
    assert pair.of(ev.PublishWill) == []
    other = Pair()
    other.go_online(will_topic=TELEMETRY)
    other.session.kick("revoked")
    other.drain()
    assert other.of(ev.PublishWill) == []
    assert other.of(ev.Close)[0].was_online is True


def test_abnormal_loss_publishes_the_will_once() -> None:
    pair = Pair()
    pair.go_online(will_topic=TELEMETRY)
    pair.session.peer_closed("connection lost", WALL)
    pair.session.peer_closed("connection lost", WALL)
    pair.session.finished()
    pair.drain()
    assert len(pair.of(ev.PublishWill)) == 1
    assert pair.session.state is ConnState.CLOSED
    assert pair.session.get_timer() is None


def test_broker_closing_the_session_closes_the_device() -> None:
    pair = Pair()
    pair.go_online()
    pair.session.broker_closed()
    pair.drain()
    assert pair.of(ev.Close)[0].why == "broker closed the session"

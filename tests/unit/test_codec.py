"""MQTT framing and codecs: whole and byte-by-byte input, limits, malformed packets, round trips."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from gateway.errors import PacketTooLarge, ProtocolError
from gateway.mqtt import codec
from gateway.mqtt.packets import PacketType, Subscribe


def frame_all(data: bytes, limit: int = 1 << 20, *, byte_by_byte: bool = False) -> list[codec.RawPacket]:
    framer = codec.Framer(limit)
    out = []
    chunks = [data[i:i + 1] for i in range(len(data))] if byte_by_byte else [data]
    for chunk in chunks:
        framer.feed(chunk)
        while (p := framer.next_packet()) is not None:
            out.append(p)
    return out


CONNECT = codec.encode_connect(client_id="dev-1", clean_session=True, keep_alive=30, username="u", password=b"p")


@pytest.mark.parametrize("byte_by_byte", [False, True])
def test_frames_a_stream_of_packets(byte_by_byte: bool) -> None:
    publish = codec.encode_publish("devices/dev-1/messages/events/", b"x" * 300, qos=1, packet_id=7)
    packets = frame_all(CONNECT + publish + b"\xc0\x00", byte_by_byte=byte_by_byte)
    assert [p.type for p in packets] == [PacketType.CONNECT, PacketType.PUBLISH, PacketType.PINGREQ]
    assert packets[1].raw == publish


def test_take_frames_everything_buffered_and_holds_an_error_back_until_the_packets_before_it() -> None:
    publish = codec.encode_publish("devices/dev-1/messages/events/", b"x" * 300, qos=1, packet_id=7)
    framer = codec.Framer(1024)
    framer.feed(CONNECT + publish + b"\xc0\x00" + publish[:5])
    assert [p.type for p in framer.take()] == [PacketType.CONNECT, PacketType.PUBLISH, PacketType.PINGREQ]
    assert framer.take() == []
    assert framer.buffered == 5
    framer.feed(publish[5:] + b"\x30\xff\xff\x03")  # a whole PUBLISH, then one over the limit
    assert [p.raw for p in framer.take()] == [publish]
    with pytest.raises(PacketTooLarge):
        framer.take()


@example(b"\x00\x00\x00'", 4)  # a whole packet, then a header over the limit, in one read
@given(st.binary(max_size=64), st.integers(min_value=1, max_value=8))
def test_take_and_next_packet_frame_any_stream_alike(data: bytes, cut: int) -> None:
    def run(step: str) -> tuple[list[bytes], str | None]:
        framer, out, error = codec.Framer(40), [], None
        try:
            for at in range(0, len(data), cut):
                framer.feed(data[at:at + cut])
                if step == "take":
                    # As the session calls it: until it returns nothing (a held-back error raises then).
                    while packets := framer.take():
                        out += [p.raw for p in packets]
                else:
                    while (p := framer.next_packet()) is not None:
                        out.append(p.raw)
        except ProtocolError as exc:
            error = exc.reason
        return out, error

    assert run("take") == run("next")


@pytest.mark.parametrize("qos", [0, 1])
@pytest.mark.parametrize("topic", ["a/b", "devices/d/messages/events/$.ct=x&k=v", "é/ü"])
def test_split_publish_agrees_with_decode_publish(qos: int, topic: str) -> None:
    (packet,) = frame_all(codec.encode_publish(topic, b"payload", qos=qos, packet_id=9 if qos else None))
    raw_topic, packet_id, payload = codec.split_publish(packet)
    publish = codec.decode_publish(packet)
    assert (codec.publish_topic(raw_topic), packet_id, payload) == (publish.topic, publish.packet_id, publish.payload)


@pytest.mark.parametrize(("body", "flags", "reason"), [
    (b"\x00", 0x02, "malformed_packet"),  # ends inside the topic length
    (b"\x00\x03ab", 0x00, "malformed_packet"),  # topic shorter than announced
    (b"\x00\x01a\x00", 0x02, "malformed_packet"),  # QoS 1 without a whole packet id
    (b"\x00\x01a\x00\x00", 0x02, "malformed_packet"),  # packet id 0
    (b"\x00\x01a", 0x06, "malformed_packet"),  # QoS 3
])
def test_split_publish_refuses_what_decode_publish_refuses(body: bytes, flags: int, reason: str) -> None:
    packet = codec.RawPacket(PacketType.PUBLISH, flags, body, b"")
    for decode in (codec.split_publish, codec.decode_publish):
        with pytest.raises(ProtocolError) as err:
            decode(packet)  # type: ignore[operator]
        assert err.value.reason == reason


@pytest.mark.parametrize(("raw", "reason"), [(b"a/+", "wildcard_in_topic"), (b"#", "wildcard_in_topic"),
                                             (b"a\x00", "malformed_utf8"), (b"\xff", "malformed_utf8")])
def test_publish_topic_refuses_wildcards_nul_and_bad_utf8(raw: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError) as err:
        codec.publish_topic(raw)
    assert err.value.reason == reason


def test_connect_round_trip() -> None:
    (packet,) = frame_all(CONNECT)
    connect = codec.decode_connect(packet)
    assert (connect.client_id, connect.clean_session, connect.keep_alive) == ("dev-1", True, 30)
    assert (connect.username, connect.password, connect.will) == ("u", b"p", None)


def test_publish_round_trip_qos1() -> None:
    (packet,) = frame_all(codec.encode_publish("a/b", b"hello", qos=1, packet_id=513, retain=True))
    publish = codec.decode_publish(packet)
    assert (publish.topic, publish.payload, publish.qos, publish.packet_id, publish.retain) == (
        "a/b", b"hello", 1, 513, True)


def test_oversized_packet_is_refused_from_its_header_alone() -> None:
    framer = codec.Framer(1024)
    header = codec.encode_publish("t", b"x" * 2000)[:4]  # no payload sent yet
    framer.feed(header)
    with pytest.raises(PacketTooLarge):
        framer.next_packet()


def test_remaining_length_longer_than_four_bytes_is_malformed() -> None:
    framer = codec.Framer(1 << 30)
    framer.feed(b"\x30\xff\xff\xff\xff\x01")
    with pytest.raises(ProtocolError) as err:
        framer.next_packet()
    assert err.value.reason == "malformed_length"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\x00\x04MQTT\x05\x02\x00\x1e\x00\x01a", "unsupported_protocol"),
        (b"\x00\x04MQTT\x04\x03\x00\x1e\x00\x01a", "malformed_packet"),  # reserved flag
        (b"\x00\x04MQTT\x04\x42\x00\x1e\x00\x01a\x00\x01p", "malformed_packet"),  # password w/o username
        (b"\x00\x04MQTT\x04\x1e\x00\x1e\x00\x01a\x00\x01t\x00\x00", "malformed_packet"),  # will QoS 3
        (b"\x00\x04MQTT\x04\x02\x00\x1e\x00\x05a", "malformed_packet"),  # client id runs past the end
        (b"\x00\x04MQTT\x04\x02\x00\x1e\x00\x02\xff\xfe", "malformed_utf8"),
        (b"\x00\x04MQTT\x04\x02\x00\x1e\x00\x01a\x00", "malformed_packet"),  # trailing byte
    ],
)
def test_bad_connects(body: bytes, reason: str) -> None:
    packet = codec.RawPacket(PacketType.CONNECT, 0, body, b"")
    with pytest.raises(ProtocolError) as err:
        codec.decode_connect(packet)
    assert err.value.reason == reason


def test_unsupported_protocol_is_its_own_error() -> None:
    body = b"\x00\x04MQTT\x05\x02\x00\x1e\x00\x01a"
    with pytest.raises(codec.UnsupportedProtocol):
        codec.decode_connect(codec.RawPacket(PacketType.CONNECT, 0, body, b""))


def test_will_is_decoded() -> None:
    body = b"\x00\x04MQTT\x04\x2e\x00\x1e\x00\x01a\x00\x01t\x00\x02hi"  # will, QoS 1, retain
    connect = codec.decode_connect(codec.RawPacket(PacketType.CONNECT, 0, body, b""))
    assert connect.will is not None
    assert (connect.will.topic, connect.will.payload, connect.will.qos, connect.will.retain) == ("t", b"hi", 1, True)


def test_publish_qos3_and_packet_id_zero_are_malformed() -> None:
    with pytest.raises(ProtocolError):
        codec.decode_publish(codec.RawPacket(PacketType.PUBLISH, 0x06, b"\x00\x01t\x00\x01", b""))
    with pytest.raises(ProtocolError):
        codec.decode_publish(codec.RawPacket(PacketType.PUBLISH, 0x02, b"\x00\x01t\x00\x00", b""))


def test_subscribe_decoding_and_flags() -> None:
    (packet,) = frame_all(codec.encode_subscribe(9, [("a/#", 1), ("b", 2)]))
    assert codec.decode_subscribe(packet) == Subscribe(9, (("a/#", 1), ("b", 2)))
    with pytest.raises(ProtocolError):
        codec.decode_subscribe(codec.RawPacket(PacketType.SUBSCRIBE, 0, packet.body, b""))
    with pytest.raises(ProtocolError):
        codec.decode_subscribe(codec.RawPacket(PacketType.SUBSCRIBE, 2, b"\x00\x09", b""))


def test_split_and_splice_subscribe() -> None:
    sub = Subscribe(5, (("ok/a", 2), ("denied", 1), ("ok/b", 0)))
    forward, plan = codec.split_subscribe(sub, [True, False, True])
    assert forward == codec.encode_subscribe(5, [("ok/a", 1), ("ok/b", 0)])  # QoS capped at 1
    assert plan is not None
    broker_suback = codec.encode_suback(5, [1, 0])
    assert codec.splice_suback(broker_suback, plan) == codec.encode_suback(5, [1, 0x80, 0])


def test_split_subscribe_all_denied_and_all_allowed() -> None:
    sub = Subscribe(5, (("x", 1),))
    assert codec.split_subscribe(sub, [False]) == (None, None)
    forward, plan = codec.split_subscribe(sub, [True])
    assert forward is not None
    assert plan is None


@given(st.binary(max_size=512))
def test_framer_never_crashes_and_never_buffers_past_the_limit(data: bytes) -> None:
    """Invariant: arbitrary bytes produce packets or a ProtocolError, nothing else."""
    framer = codec.Framer(256)
    framer.feed(data)
    try:
        while (packet := framer.next_packet()) is not None:
            assert len(packet.raw) <= 256
            for decode in (codec.decode_connect, codec.decode_publish, codec.decode_subscribe):
                with contextlib.suppress(ProtocolError):
                    decode(packet)
    except ProtocolError:
        pass

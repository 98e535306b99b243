"""The lean load generator's pure parts: packets cut from any split of the stream, the schedule's spread
and catch-up, and acked seqs written as ranges and read back."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from bench.leanwire import (
    MAX_INCOMING_PACKET,
    Schedule,
    StreamError,
    add_to_ranges,
    compact,
    expand,
    publish_qos1_id,
    qos1_publish,
    reading_payload,
    split_packets,
    topic_field,
)
from gateway.mqtt import codec

CONNACK = codec.encode_connack(0)
PUBACKS = [codec.encode_puback(n) for n in (1, 2, 300)]
SUBACK = codec.encode_suback(1, [1, 0, 0, 0])
TWIN = codec.encode_publish("$iothub/twin/res/200/?$rid=2", b"x" * 200)  # a two-byte remaining length
C2D = codec.encode_publish("devices/d/messages/devicebound/", b"hi", qos=1, packet_id=7)
STREAM = CONNACK + SUBACK + TWIN + PUBACKS[0] + C2D + PUBACKS[1] + PUBACKS[2]
EXPECTED = [(0x20, CONNACK[2:]), (0x90, SUBACK[2:]), (0x30, TWIN[3:]), (0x40, PUBACKS[0][2:]),
            (0x32, C2D[2:]), (0x40, PUBACKS[1][2:]), (0x40, PUBACKS[2][2:])]


def feed(chunks: list[bytes]) -> tuple[list[tuple[int, bytes]], bytearray]:
    buf, out = bytearray(), []
    for chunk in chunks:
        buf += chunk
        out += split_packets(buf)
    return out, buf


@pytest.mark.parametrize("chunking", ["whole", "byte by byte", "threes", "split in the length"])
def test_packets_come_out_whole_and_in_order_however_the_stream_is_cut(chunking: str) -> None:
    size = {"whole": len(STREAM), "byte by byte": 1, "threes": 3}.get(chunking)
    if size is None:  # cut right after TWIN's first length byte (0x80 | ...): the length is incomplete
        cut = len(CONNACK + SUBACK) + 2
        chunks = [STREAM[:cut], STREAM[cut:]]
    else:
        chunks = [STREAM[i:i + size] for i in range(0, len(STREAM), size)]
    packets, rest = feed(chunks)
    assert packets == EXPECTED
    assert rest == b""


@pytest.mark.parametrize(("data", "packets", "left"), [
    (b"", [], b""),
    (b"\x40", [], b"\x40"),
    (b"\x40\x02\x00", [], b"\x40\x02\x00"),
    (b"\xd0\x00", [(0xD0, b"")], b""),
    (b"\x40\x02\x00\x05\x40", [(0x40, b"\x00\x05")], b"\x40"),
])
def test_a_partial_packet_stays_in_the_buffer(data: bytes, packets: list[tuple[int, bytes]], left: bytes) -> None:
    buf = bytearray(data)
    assert split_packets(buf) == packets
    assert buf == left


@pytest.mark.parametrize("data", [
    b"\x30\xff\xff\xff\xff\x01",  # a fifth length byte
    b"\x30\x81\x80\x04",  # 65,537 bytes announced
])
def test_a_broken_or_oversized_length_is_a_stream_error(data: bytes) -> None:
    assert MAX_INCOMING_PACKET < 65_537
    with pytest.raises(StreamError):
        split_packets(bytearray(data))


@pytest.mark.parametrize(("packet", "packet_id"), [(C2D, 7), (TWIN, None)])
def test_only_a_qos1_publish_wants_a_puback(packet: bytes, packet_id: int | None) -> None:
    ((first, body),) = split_packets(bytearray(packet))
    assert publish_qos1_id(first, body) == packet_id


@pytest.mark.parametrize(("count", "interval", "tick"), [(5000, 1.0, 0.005), (1000, 1.0, 0.01), (7, 1.0, 0.005),
                                                         (300, 5.0, 0.01), (1, 1.0, 0.005), (10, 0.001, 0.005)])
def test_the_schedule_puts_every_device_in_one_slot_spread_evenly(count: int, interval: float, tick: float) -> None:
    schedule = Schedule(count, interval, tick, start=0.0)
    members = schedule.members()
    assert sorted(i for slot in members for i in slot) == list(range(count))
    sizes = [len(slot) for slot in members]
    assert max(sizes) - min(sizes) <= 1 or max(sizes) <= 1


@pytest.mark.parametrize("nows", [
    [0.0, 0.01, 0.02, 0.03],
    [0.0, 0.037],  # a late tick catches up on the slots it missed
    [0.0, 0.0, 0.0049, 0.02],  # calls within one slot hand it out once
    [0.5, 0.5, 0.7],  # the first tick comes late
])
def test_the_schedule_hands_out_each_slot_once_in_order(nows: list[float]) -> None:
    schedule = Schedule(count=100, interval=1.0, tick=0.005, start=0.0)
    handed = [slot for now in nows for slot in schedule.due(now)]
    assert handed == list(range(len(handed)))
    assert len(handed) == int(nows[-1] / 0.005) + 1
    assert schedule.next_at() == pytest.approx(len(handed) * 0.005)


def test_over_two_intervals_every_device_is_due_twice() -> None:
    schedule = Schedule(count=50, interval=1.0, tick=0.01, start=10.0)
    members = schedule.members()
    due = Counter(i for k in range(200) for slot in schedule.due(10.0 + k * 0.01) for i in members[slot])
    assert set(due) == set(range(50))
    assert set(due.values()) == {2}


@pytest.mark.parametrize(("seqs", "ranges"), [
    ([], []),
    ([1], [[1, 1]]),
    ([1, 2, 3, 4], [[1, 4]]),
    ([1, 2, 4, 5, 9], [[1, 2], [4, 5], [9, 9]]),
    ([3, 1, 2, 2], [[1, 3]]),
])
def test_acked_seqs_compact_to_ranges_and_expand_back(seqs: list[int], ranges: list[list[int]]) -> None:
    assert compact(seqs) == ranges
    assert list(expand(ranges)) == sorted(set(seqs))


@pytest.mark.parametrize(("arrivals", "ranges"), [
    ([1, 2, 3], [[1, 3]]),
    ([1, 2, 2, 3], [[1, 3]]),  # a repeated PUBACK's seq is recorded once
    ([1, 2, 5, 6], [[1, 2], [5, 6]]),  # readings lost with a connection leave a gap
])
def test_ranges_grow_as_pubacks_arrive(arrivals: list[int], ranges: list[list[int]]) -> None:
    built: list[list[int]] = []
    for seq in arrivals:
        add_to_ranges(built, seq)
    assert built == ranges


def test_a_reading_payload_is_the_json_hub_readings_parses() -> None:
    body = json.loads(reading_payload(42, 21.456, 55.54, "2026-01-01T00:00:00.000Z"))
    assert body == {"temperature": 21.46, "humidity": 55.5, "seq": 42, "ts": "2026-01-01T00:00:00.000Z"}


@pytest.mark.parametrize(("topic", "packet_id", "payload"), [
    ("devices/fleet-00000/messages/events/", 1, b'{"seq":1}'),
    ("devices/fleet-04999/messages/events/", 65535, b"x" * 87),  # remaining length 127: the last one-byte length
    ("devices/fleet-04999/messages/events/", 258, b"x" * 88),  # 128: two bytes
    ("d", 7, b""),
])
def test_a_prebuilt_topic_publish_is_the_codecs_bytes(topic: str, packet_id: int, payload: bytes) -> None:
    expected = codec.encode_publish(topic, payload, qos=1, packet_id=packet_id)
    assert qos1_publish(topic, topic_field(topic), packet_id, payload) == expected

"""The lean load generator's pure parts: cutting the gateway's packets out of a byte stream, spreading
devices over the publish interval, and writing acknowledged seqs down as ranges. No I/O, no clock."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from gateway.mqtt import codec

# What the gateway sends a device is CONNACK, SUBACK, PUBACK, PINGRESP and small twin/method PUBLISHes;
# a packet announcing more than this is a broken stream, not something to buffer.
MAX_INCOMING_PACKET = 64 * 1024

CONNACK, PUBLISH, PUBACK, SUBACK, PINGRESP = 2, 3, 4, 9, 13


class StreamError(ValueError):
    """The gateway's bytes cannot be MQTT: a malformed length or a packet over MAX_INCOMING_PACKET."""


def split_packets(buf: bytearray) -> list[tuple[int, bytes]]:
    """Take every complete packet off the front of `buf` as (first byte, body); a partial one stays."""
    out: list[tuple[int, bytes]] = []
    start, end = 0, len(buf)
    while end - start >= 2:
        length, shift, pos = 0, 0, start + 1
        while True:
            if pos >= end:
                del buf[:start]
                return out  # the length itself is cut off
            byte = buf[pos]
            length |= (byte & 0x7F) << shift
            pos += 1
            if not byte & 0x80:
                break
            shift += 7
            if shift > 21:
                raise StreamError("a remaining length longer than 4 bytes")
        if length > MAX_INCOMING_PACKET:
            raise StreamError(f"a {length}-byte packet from the gateway (limit {MAX_INCOMING_PACKET})")
        if end - pos < length:
            break
        out.append((buf[start], bytes(buf[pos:pos + length])))
        start = pos + length
    del buf[:start]
    return out


def publish_qos1_id(first: int, body: bytes) -> int | None:
    """The packet id a QoS 1 PUBLISH from the gateway must be acknowledged with; None for QoS 0."""
    if (first >> 1) & 3 == 0:
        return None
    topic_length = int.from_bytes(body[:2], "big")
    return int.from_bytes(body[2 + topic_length:4 + topic_length], "big")


# ---- the schedule ---------------------------------------------------------------------------------------


class Schedule:
    """`count` devices, one reading each per `interval`, their phases spread evenly over `slots` ticks.

    `due(now)` names the slots whose moment has come since the last call, each once, so a late tick
    catches up instead of skipping devices.
    """

    def __init__(self, count: int, interval: float, tick: float, start: float) -> None:
        self.count = count
        self.slots = max(1, round(interval / tick))
        self.tick = interval / self.slots
        self.start = start
        self._next = 0  # the next absolute slot (ticks since start) to hand out

    def slot_of(self, index: int) -> int:
        return index * self.slots // self.count

    def members(self) -> list[list[int]]:
        """Slot -> the device indexes that publish in it."""
        table: list[list[int]] = [[] for _ in range(self.slots)]
        for index in range(self.count):
            table[self.slot_of(index)].append(index)
        return table

    def due(self, now: float) -> list[int]:
        upto = int((now - self.start) / self.tick) + 1  # absolute slots that have begun by `now`
        out = [n % self.slots for n in range(self._next, max(self._next, upto))]
        self._next = max(self._next, upto)
        return out

    def next_at(self) -> float:
        return self.start + self._next * self.tick


# ---- acknowledged seqs as ranges --------------------------------------------------------------------------


def add_to_ranges(ranges: list[list[int]], seq: int) -> None:
    """Record `seq`: PUBACKs come back in order on one connection, so this almost always extends the last."""
    if ranges and ranges[-1][1] + 1 == seq:
        ranges[-1][1] = seq
    elif ranges and ranges[-1][0] <= seq <= ranges[-1][1]:
        return
    else:
        ranges.append([seq, seq])


def compact(seqs: Iterable[int]) -> list[list[int]]:
    """Sorted, distinct seqs as inclusive [first, last] runs."""
    ranges: list[list[int]] = []
    for seq in sorted(set(seqs)):
        add_to_ranges(ranges, seq)
    return ranges


def expand(ranges: Iterable[Iterable[int]]) -> Iterator[int]:
    for first, last in ranges:
        yield from range(first, last + 1)


def topic_field(topic: str) -> bytes:
    """The topic as a PUBLISH carries it (length-prefixed UTF-8), built once per device."""
    raw = topic.encode()
    return len(raw).to_bytes(2, "big") + raw


def qos1_publish(topic: str, field: bytes, packet_id: int, payload: bytes) -> bytes:
    """codec.encode_publish(topic, payload, qos=1, packet_id=packet_id), without re-encoding the topic each time."""
    length = len(field) + 2 + len(payload)
    if length > 127:  # a remaining length over one byte: rare enough for the general encoder
        return codec.encode_publish(topic, payload, qos=1, packet_id=packet_id)
    return b"%c%c%b%c%c%b" % (0x32, length, field, packet_id >> 8, packet_id & 0xFF, payload)


def reading_payload(seq: int, temperature: float, humidity: float, ts: str, pad: bytes = b"") -> bytes:
    """A TempSensor reading's JSON (devices/readings.py), formatted without json.dumps: it is per message.
    `pad`, if any, goes in a "pad" field: a bigger reading, as a device with more sensors would send."""
    if pad:
        return (b'{"temperature":%.2f,"humidity":%.1f,"seq":%d,"ts":"%s","pad":"%s"}'
                % (temperature, humidity, seq, ts.encode(), pad))
    return b'{"temperature":%.2f,"humidity":%.1f,"seq":%d,"ts":"%s"}' % (temperature, humidity, seq, ts.encode())

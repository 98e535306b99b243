"""MQTT 3.1.1 framing and codecs over bytes, sans-IO (like h11: feed bytes, take packets out).

Every limit is enforced while framing, before a byte of an oversized packet is buffered.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.errors import PacketTooLarge, ProtocolError
from gateway.mqtt.packets import Connect, Publish, Subscribe, Will

# MQTT's variable-length "remaining length" uses at most 4 bytes (MQTT-2.2.3): 268,435,455.
_MAX_LENGTH_BYTES = 4

# Granted-QoS code for a refused subscription (MQTT-3.9.3).
SUBACK_FAILURE = 0x80

# The highest QoS the gateway grants: edgeHub refuses QoS 2 and so do we.
MAX_GRANTED_QOS = 1


class UnsupportedProtocol(ProtocolError):
    """CONNECT for a protocol level we do not speak; answered with CONNACK 1 (MQTT-3.1.2-2)."""


@dataclass(frozen=True, slots=True)
class RawPacket:
    """One framed packet: fixed-header type and flags, the body after the fixed header, and the
    whole packet as received (forwarded to amqtt untouched where we do not rewrite it)."""

    type: int
    flags: int
    body: bytes
    raw: bytes


class Framer:
    """Cuts a byte stream into packets; refuses a packet whose announced size is over `max_packet_size`."""

    __slots__ = ("_buf", "_error", "max_packet_size")

    def __init__(self, max_packet_size: int) -> None:
        self.max_packet_size = max_packet_size
        self._buf = bytearray()
        self._error: ProtocolError | None = None

    def feed(self, data: bytes) -> None:
        self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf)

    @property
    def first_type(self) -> int | None:
        """The packet type of the next packet, known from its first byte before the rest arrives."""
        return self._buf[0] >> 4 if self._buf else None

    def next_packet(self) -> RawPacket | None:
        """The next whole packet, or None until more bytes arrive."""
        buf = self._buf
        if len(buf) < 2:
            return None
        length, header_len = _remaining_length(buf)
        if header_len == 0:
            return None
        total = header_len + length
        if total > self.max_packet_size:
            raise PacketTooLarge(
                "packet_too_large", f"packet of {total} bytes is over the limit of {self.max_packet_size}"
            )
        if len(buf) < total:
            return None
        raw = bytes(buf[:total])
        del buf[:total]
        return RawPacket(type=raw[0] >> 4, flags=raw[0] & 0x0F, body=raw[header_len:], raw=raw)

    def take(self) -> list[RawPacket]:
        """Every whole packet buffered, in order ([] until more bytes arrive), consuming the buffer once.

        A framing error after some whole packets is held back: those packets come out first, and the
        next call raises it -- the same order as calling `next_packet` one at a time.
        """
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        buf = self._buf
        end = len(buf)
        packets: list[RawPacket] = []
        at = 0
        while end - at >= 2:
            # The remaining length, inlined (it is one byte for any packet under 128 bytes).
            byte = buf[at + 1]
            if byte < 0x80:
                length, header_len = byte, 2
            else:
                try:
                    length, header_len = _remaining_length(buf[at:at + 1 + _MAX_LENGTH_BYTES])
                except ProtocolError as exc:
                    self._error = exc
                    break
                if header_len == 0:
                    break
            total = header_len + length
            if total > self.max_packet_size:
                self._error = PacketTooLarge(
                    "packet_too_large", f"packet of {total} bytes is over the limit of {self.max_packet_size}")
                break
            if end - at < total:
                break
            raw = bytes(buf[at:at + total])
            first = raw[0]
            packets.append(RawPacket(first >> 4, first & 0x0F, raw[header_len:], raw))
            at += total
        if at:
            del buf[:at]
        if not packets and self._error is not None:
            error, self._error = self._error, None
            raise error
        return packets


def _remaining_length(buf: bytearray) -> tuple[int, int]:
    """(remaining length, fixed header size); header size 0 means 'need more bytes'."""
    value = 0
    for i in range(_MAX_LENGTH_BYTES):
        pos = 1 + i
        if pos >= len(buf):
            return 0, 0
        byte = buf[pos]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, pos + 1
    raise ProtocolError("malformed_length", "remaining length uses more than 4 bytes")


# ---- decoding ----------------------------------------------------------------------------------


class _Reader:
    __slots__ = ("data", "pos", "what")

    def __init__(self, data: bytes, what: str) -> None:
        self.data = data
        self.pos = 0
        self.what = what

    def _need(self, n: int) -> None:
        if self.pos + n > len(self.data):
            raise ProtocolError("malformed_packet", f"{self.what} ends early")

    def u8(self) -> int:
        self._need(1)
        value = self.data[self.pos]
        self.pos += 1
        return value

    def u16(self) -> int:
        self._need(2)
        value = int.from_bytes(self.data[self.pos : self.pos + 2], "big")
        self.pos += 2
        return value

    def binary(self) -> bytes:
        n = self.u16()
        self._need(n)
        value = self.data[self.pos : self.pos + n]
        self.pos += n
        return value

    def text(self, field: str) -> str:
        raw = self.binary()
        try:
            value = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError("malformed_utf8", f"{self.what} {field} is not UTF-8") from exc
        if "\x00" in value:
            raise ProtocolError("malformed_utf8", f"{self.what} {field} contains U+0000 (MQTT-1.5.3-2)")
        return value

    def rest(self) -> bytes:
        value = self.data[self.pos :]
        self.pos = len(self.data)
        return value

    def at_end(self) -> bool:
        return self.pos == len(self.data)


_PROTOCOLS = {("MQTT", 4), ("MQIsdp", 3)}


def decode_connect(packet: RawPacket) -> Connect:
    """CONNECT, validated against MQTT 3.1.1 section 3.1."""
    if packet.flags != 0:
        raise ProtocolError("malformed_packet", "CONNECT fixed-header flags must be 0")
    r = _Reader(packet.body, "CONNECT")
    name = r.text("protocol name")
    level = r.u8()
    if (name, level) not in _PROTOCOLS:
        raise UnsupportedProtocol("unsupported_protocol", f"protocol {name!r} level {level}; MQTT 3.1.1 only")
    flags = r.u8()
    if flags & 0x01:
        raise ProtocolError("malformed_packet", "CONNECT reserved flag is set (MQTT-3.1.2-3)")
    keep_alive = r.u16()
    client_id = r.text("client id")
    will = None
    has_will = bool(flags & 0x04)
    will_qos = (flags >> 3) & 0x03
    will_retain = bool(flags & 0x20)
    if has_will:
        if will_qos > 2:
            raise ProtocolError("malformed_packet", "will QoS 3 (MQTT-3.1.2-14)")
        will = Will(topic=r.text("will topic"), payload=r.binary(), qos=will_qos, retain=will_retain)
    elif will_qos or will_retain:
        raise ProtocolError("malformed_packet", "will QoS/retain set without a will (MQTT-3.1.2-11)")
    username = r.text("username") if flags & 0x80 else None
    if flags & 0x40 and username is None:
        raise ProtocolError("malformed_packet", "password without username (MQTT-3.1.2-22)")
    password = r.binary() if flags & 0x40 else None
    if not r.at_end():
        raise ProtocolError("malformed_packet", "CONNECT has trailing bytes")
    return Connect(
        protocol_level=level,
        clean_session=bool(flags & 0x02),
        keep_alive=keep_alive,
        client_id=client_id,
        will=will,
        username=username,
        password=password,
    )


def decode_publish(packet: RawPacket) -> Publish:
    """PUBLISH (MQTT-3.3): topic, QoS, packet id for QoS > 0, payload."""
    qos = (packet.flags >> 1) & 0x03
    if qos == 3:
        raise ProtocolError("malformed_packet", "PUBLISH with QoS 3 (MQTT-3.3.1-4)")
    r = _Reader(packet.body, "PUBLISH")
    topic = r.text("topic")
    if "+" in topic or "#" in topic:
        raise ProtocolError("wildcard_in_topic", "PUBLISH topic name contains a wildcard (MQTT-3.3.2-2)")
    packet_id = None
    if qos:
        packet_id = r.u16()
        if packet_id == 0:
            raise ProtocolError("malformed_packet", "PUBLISH packet id 0 (MQTT-2.3.1-1)")
    return Publish(
        topic=topic,
        payload=r.rest(),
        qos=qos,
        retain=bool(packet.flags & 0x01),
        dup=bool(packet.flags & 0x08),
        packet_id=packet_id,
    )


def split_publish(packet: RawPacket) -> tuple[bytes, int | None, bytes]:
    """PUBLISH's (topic bytes, packet id, payload), bounds checked; the topic is not decoded here.

    The hot path: a device publishes to the same topic over and over, so the front door decodes and
    checks a topic (`publish_topic`) only when its bytes change. QoS 3 and packet id 0 are refused
    here, as in `decode_publish`.
    """
    flags = packet.flags
    qos = (flags >> 1) & 0x03
    if qos == 3:
        raise ProtocolError("malformed_packet", "PUBLISH with QoS 3 (MQTT-3.3.1-4)")
    body = packet.body
    if len(body) < 2:
        raise ProtocolError("malformed_packet", "PUBLISH ends early")
    end = 2 + ((body[0] << 8) | body[1])
    if qos:
        if len(body) < end + 2:
            raise ProtocolError("malformed_packet", "PUBLISH ends early")
        packet_id = (body[end] << 8) | body[end + 1]
        if packet_id == 0:
            raise ProtocolError("malformed_packet", "PUBLISH packet id 0 (MQTT-2.3.1-1)")
        return body[2:end], packet_id, body[end + 2:]
    if len(body) < end:
        raise ProtocolError("malformed_packet", "PUBLISH ends early")
    return body[2:end], None, body[end:]


def publish_topic(raw: bytes) -> str:
    """A PUBLISH topic name from its bytes: UTF-8, no U+0000, no wildcard (MQTT-1.5.3, MQTT-3.3.2-2)."""
    try:
        topic = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError("malformed_utf8", "PUBLISH topic is not UTF-8") from exc
    if "\x00" in topic:
        raise ProtocolError("malformed_utf8", "PUBLISH topic contains U+0000 (MQTT-1.5.3-2)")
    if "+" in topic or "#" in topic:
        raise ProtocolError("wildcard_in_topic", "PUBLISH topic name contains a wildcard (MQTT-3.3.2-2)")
    return topic


def decode_subscribe(packet: RawPacket) -> Subscribe:
    """SUBSCRIBE (MQTT-3.8): at least one (filter, QoS) pair."""
    if packet.flags != 0x02:
        raise ProtocolError("malformed_packet", "SUBSCRIBE fixed-header flags must be 0010 (MQTT-3.8.1-1)")
    r = _Reader(packet.body, "SUBSCRIBE")
    packet_id = r.u16()
    filters: list[tuple[str, int]] = []
    while not r.at_end():
        flt = r.text("topic filter")
        qos = r.u8()
        if qos & 0xFC:
            raise ProtocolError("malformed_packet", "SUBSCRIBE requested QoS above 2 (MQTT-3.8.3-4)")
        filters.append((flt, qos))
    if not filters:
        raise ProtocolError("malformed_packet", "SUBSCRIBE without a topic filter (MQTT-3.8.3-3)")
    return Subscribe(packet_id=packet_id, filters=tuple(filters))


def decode_unsubscribe(packet: RawPacket) -> tuple[int, tuple[str, ...]]:
    """UNSUBSCRIBE (MQTT-3.10): packet id and at least one topic filter."""
    if packet.flags != 0x02:
        raise ProtocolError("malformed_packet", "UNSUBSCRIBE fixed-header flags must be 0010 (MQTT-3.10.1-1)")
    r = _Reader(packet.body, "UNSUBSCRIBE")
    packet_id = r.u16()
    filters: list[str] = []
    while not r.at_end():
        filters.append(r.text("topic filter"))
    if not filters:
        raise ProtocolError("malformed_packet", "UNSUBSCRIBE without a topic filter (MQTT-3.10.3-2)")
    return packet_id, tuple(filters)


def suback_packet_id(data: bytes) -> int | None:
    """The packet id of a whole SUBACK packet, whatever the size of its remaining length; None if
    `data` is not a SUBACK."""
    if not data or data[0] != 0x90:
        return None
    length, header_len = _remaining_length(bytearray(data[:5]))
    if header_len == 0 or length < 2 or len(data) < header_len + 2:
        return None
    return int.from_bytes(data[header_len : header_len + 2], "big")


# ---- encoding ----------------------------------------------------------------------------------


def _length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def _packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + _length(len(body)) + body


def _str(text: str) -> bytes:
    raw = text.encode("utf-8")
    return len(raw).to_bytes(2, "big") + raw


def _bin(data: bytes) -> bytes:
    return len(data).to_bytes(2, "big") + data


def encode_connack(code: int, *, session_present: bool = False) -> bytes:
    return bytes((0x20, 2, 1 if session_present and code == 0 else 0, code))


def encode_puback(packet_id: int) -> bytes:
    return b"\x40\x02" + packet_id.to_bytes(2, "big")


def encode_pingresp() -> bytes:
    return b"\xd0\x00"


def encode_suback(packet_id: int, codes: list[int]) -> bytes:
    return _packet(0x90, packet_id.to_bytes(2, "big") + bytes(codes))


def encode_connect(
    *, client_id: str, clean_session: bool, keep_alive: int, username: str | None = None,
    password: bytes | None = None,
) -> bytes:
    flags = (0x02 if clean_session else 0) | (0x80 if username is not None else 0) | (
        0x40 if password is not None else 0
    )
    body = _str("MQTT") + bytes((4, flags)) + keep_alive.to_bytes(2, "big") + _str(client_id)
    if username is not None:
        body += _str(username)
    if password is not None:
        body += _bin(password)
    return _packet(0x10, body)


def encode_subscribe(packet_id: int, filters: list[tuple[str, int]]) -> bytes:
    body = packet_id.to_bytes(2, "big") + b"".join(_str(f) + bytes((q,)) for f, q in filters)
    return _packet(0x82, body)


def encode_unsubscribe(packet_id: int, filters: list[str]) -> bytes:
    return _packet(0xA2, packet_id.to_bytes(2, "big") + b"".join(_str(f) for f in filters))


def encode_publish(topic: str, payload: bytes, *, qos: int = 0, retain: bool = False,
                   packet_id: int | None = None) -> bytes:
    body = _str(topic) + (packet_id.to_bytes(2, "big") if qos and packet_id is not None else b"") + payload
    return _packet(0x30 | (qos << 1) | (1 if retain else 0), body)


# ---- subscribe split and SUBACK splice ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SubackPlan:
    """Which positions of the device's SUBSCRIBE were allowed, to rebuild its SUBACK from amqtt's."""

    allowed: tuple[bool, ...]


def split_subscribe(subscribe: Subscribe, allowed: list[bool]) -> tuple[bytes | None, SubackPlan | None]:
    """The SUBSCRIBE to forward to the broker (allowed filters, QoS capped at 1) and the plan to
    splice 0x80s back into its SUBACK; (None, None) when nothing is allowed."""
    kept = [(flt, min(qos, MAX_GRANTED_QOS)) for (flt, qos), ok in zip(subscribe.filters, allowed, strict=True)
            if ok]
    if not kept:
        return None, None
    plan = None if all(allowed) else SubackPlan(tuple(allowed))
    return encode_subscribe(subscribe.packet_id, kept), plan


def splice_suback(data: bytes, plan: SubackPlan) -> bytes:
    """Rebuild the device's SUBACK: the broker's codes at allowed positions, 0x80 elsewhere."""
    _length_value, header_len = _remaining_length(bytearray(data))
    body = data[header_len:]
    packet_id, granted = body[:2], iter(body[2:])
    codes = [next(granted, SUBACK_FAILURE) if ok else SUBACK_FAILURE for ok in plan.allowed]
    return _packet(0x90, packet_id + bytes(codes))

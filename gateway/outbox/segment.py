"""The outbox's on-disk record format: pure encoding and decoding of bytes, no files, no clock.

A segment file is a magic header followed by records. Every record is framed as

    u32 length | u32 crc32(body) | body            (little-endian; length counts the body only)

and its body starts with a type byte:

    STRING  u8 1 | u16 ref | utf-8 text              interns a device id, kind or topic for this segment
    CLOCK   u8 2 | f64 queue clock | f64 wall clock   starts a commit: the messages after it were
                                                      queued at this queue-clock reading
    MESSAGE u8 3 | u16 device | u16 kind | u16 topic | u8 qos | u8 flags | f64 enqueued_at
                 | len + properties JSON | [u8 len + message id, if flags & 1] | payload
                 (len: one byte under 255, else 255 and a u16)
    REMOVED u8 4 | u8 why | u32 count | count x (u64 first seq, u32 run length)

A MESSAGE has no seq of its own: seqs are consecutive within a segment, starting at the number in the
file name, so the n-th MESSAGE of a segment is `first_seq + n`. Strings are interned per segment so a
100-byte telemetry message without properties costs 26 bytes of framing (measured in docs/BENCHMARKS.md), and a segment
is readable on its own. A torn tail (a crash in the middle of an append) fails its length or crc check:
`decode` stops there and says how many bytes were good.
"""

from __future__ import annotations

import enum
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from zlib import crc32 as _crc32

MAGIC = b"EGOUTBX1"
_FRAME = struct.Struct("<II")
_CLOCK = struct.Struct("<Bdd")
_MESSAGE = struct.Struct("<BHHHBBd")
_STRING = struct.Struct("<BH")
_REMOVED = struct.Struct("<BBI")
_RUN = struct.Struct("<QI")
# A record longer than this is corruption, not data: the front door caps a packet at 256 MiB.
MAX_RECORD = 512 * 1024 * 1024
# Interned strings per segment; a segment that would need more is closed and a new one started.
MAX_STRINGS = 0xFFFF
FLAG_MESSAGE_ID = 1


class RecordType(enum.IntEnum):
    STRING = 1
    CLOCK = 2
    MESSAGE = 3
    REMOVED = 4


class Removal(enum.IntEnum):
    """Why messages left the outbox (the REMOVED record's `why`)."""

    DELIVERED = 1  # the hub stored them
    EXPIRED = 2  # queued longer than time_to_live
    DEAD_LETTER = 3  # the hub refused them for good; they are in the dead-letter table


@dataclass(frozen=True, slots=True)
class StringRecord:
    ref: int
    text: str


@dataclass(frozen=True, slots=True)
class ClockRecord:
    queue_clock: float
    wall_clock: float


# Not frozen: one is built per message read (see gateway.records.InboundMessage).
@dataclass(slots=True)
class MessageRecord:
    device: int
    kind: int
    topic: int
    qos: int
    enqueued_at: float
    properties: bytes  # JSON object, utf-8
    payload: bytes
    message_id: str | None = None  # only for a re-queued dead letter, which keeps its first id


@dataclass(frozen=True, slots=True)
class RemovedRecord:
    why: Removal
    runs: tuple[tuple[int, int], ...]  # (first seq, how many consecutive seqs)


Record = StringRecord | ClockRecord | MessageRecord | RemovedRecord


def frame(body: bytes) -> bytes:
    return _FRAME.pack(len(body), zlib.crc32(body)) + body


def encode_string(ref: int, text: str) -> bytes:
    return frame(_STRING.pack(RecordType.STRING, ref) + text.encode())


def encode_clock(queue_clock: float, wall_clock: float) -> bytes:
    return frame(_CLOCK.pack(RecordType.CLOCK, queue_clock, wall_clock))


def _short_length(n: int) -> bytes:
    if n < 255:
        return bytes([n])
    if n > 0xFFFF:
        raise ValueError(f"{n} bytes of properties do not fit a record (65535 at most)")
    return b"\xff" + n.to_bytes(2, "little")


def encode_message(m: MessageRecord) -> bytes:
    return encode_message_fields(m.device, m.kind, m.topic, m.qos, m.enqueued_at, m.properties, m.payload,
                                 m.message_id)


_MESSAGE_TYPE = int(RecordType.MESSAGE)
_NO_PROPERTIES = b"\x00"


def encode_message_fields(device: int, kind: int, topic: int, qos: int, enqueued_at: float, properties: bytes,
                          payload: bytes, message_id: str | None) -> bytes:
    """A framed MESSAGE record from its fields (the commit's hot loop: no record object built)."""
    if message_id is None:
        head = _MESSAGE.pack(_MESSAGE_TYPE, device, kind, topic, qos, 0, enqueued_at)
        if properties:
            body = b"".join((head, _short_length(len(properties)), properties, payload))
        else:
            body = b"".join((head, _NO_PROPERTIES, payload))
    else:
        raw = message_id.encode()
        body = b"".join((_MESSAGE.pack(_MESSAGE_TYPE, device, kind, topic, qos, FLAG_MESSAGE_ID, enqueued_at),
                         _short_length(len(properties)), properties, bytes([len(raw)]), raw, payload))
    return _FRAME.pack(len(body), _crc32(body)) + body


def encode_removed(why: Removal, seqs: Sequence[int]) -> bytes:
    runs = list(runs_of(seqs))
    return frame(_REMOVED.pack(RecordType.REMOVED, why, len(runs)) + b"".join(_RUN.pack(a, n) for a, n in runs))


def runs_of(seqs: Sequence[int]) -> Iterator[tuple[int, int]]:
    """Sorted seqs as (first, length) runs of consecutive numbers."""
    ordered = sorted(set(seqs))
    if not ordered:
        return
    start = prev = ordered[0]
    for seq in ordered[1:]:
        if seq != prev + 1:
            yield start, prev - start + 1
            start = seq
        prev = seq
    yield start, prev - start + 1


def decode_body(body: bytes) -> Record:
    """One record's body; ValueError if it is not a record this code wrote."""
    kind = body[0] if body else 0
    if kind == RecordType.STRING:
        _, ref = _STRING.unpack_from(body)
        return StringRecord(ref, body[_STRING.size:].decode())
    if kind == RecordType.CLOCK:
        _, queue_clock, wall = _CLOCK.unpack(body)
        return ClockRecord(queue_clock, wall)
    if kind == RecordType.MESSAGE:
        _, device, kind_ref, topic, qos, flags, enqueued_at = _MESSAGE.unpack_from(body)
        at = _MESSAGE.size
        props_len, at = body[at], at + 1
        if props_len == 255:
            props_len, at = int.from_bytes(body[at:at + 2], "little"), at + 2
        properties = body[at:at + props_len]
        at += props_len
        message_id = None
        if flags & FLAG_MESSAGE_ID:
            id_len = body[at]
            message_id = body[at + 1:at + 1 + id_len].decode()
            at += 1 + id_len
        return MessageRecord(device, kind_ref, topic, qos, enqueued_at, properties, body[at:], message_id)
    if kind == RecordType.REMOVED:
        _, why, count = _REMOVED.unpack_from(body)
        runs = tuple(_RUN.unpack_from(body, _REMOVED.size + i * _RUN.size) for i in range(count))
        return RemovedRecord(Removal(why), runs)
    raise ValueError(f"unknown record type {kind}")


@dataclass(frozen=True, slots=True)
class Decoded:
    """What `decode` found: (offset, framed length, record) in file order, and where the good part ends."""

    records: list[tuple[int, int, Record]]
    good_until: int
    problem: str | None  # why decoding stopped before the end (a torn tail, or corruption)


def decode(data: bytes, start: int = 0) -> Decoded:
    """Every whole, intact record of a segment's bytes from `start` (after the magic)."""
    records: list[tuple[int, int, Record]] = []
    at, end = start, len(data)
    while at < end:
        if end - at < _FRAME.size:
            return Decoded(records, at, f"{end - at} bytes of a torn record header at offset {at}")
        length, crc = _FRAME.unpack_from(data, at)
        body_at = at + _FRAME.size
        if length == 0 or length > MAX_RECORD or body_at + length > end:
            return Decoded(records, at, f"a record at offset {at} claims {length} bytes; {end - body_at} follow")
        body = data[body_at:body_at + length]
        if zlib.crc32(body) != crc:
            return Decoded(records, at, f"the record at offset {at} fails its checksum")
        try:
            record = decode_body(body)
        except (ValueError, struct.error, UnicodeDecodeError, IndexError) as exc:
            return Decoded(records, at, f"the record at offset {at} is unreadable: {exc}")
        records.append((at, _FRAME.size + length, record))
        at = body_at + length
    return Decoded(records, at, None)


def decode_message_at(data: bytes) -> MessageRecord:
    """A framed MESSAGE record read back from disk (already checked at start-up)."""
    length, _crc = _FRAME.unpack_from(data)
    record = decode_body(data[_FRAME.size:_FRAME.size + length])
    if not isinstance(record, MessageRecord):
        raise ValueError(f"expected a message record, found {type(record).__name__}")
    return record

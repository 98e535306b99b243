"""The outbox's pure parts, table-tested: free-space decisions, the queue clock, memory refusals, the record
format (round trips, and a torn or corrupted tail fed byte by byte), `check`'s and `status`'s sentences,
and the import contract (no I/O, no clock) of the modules that decide."""

from __future__ import annotations

import ast
import random
from datetime import timedelta
from pathlib import Path

import pytest

from gateway import checks
from gateway.cli.status import outbox_lines
from gateway.outbox import segment
from gateway.outbox.bounds import (
    MAX_PENDING_BYTES,
    MAX_PENDING_QOS0_BYTES_PER_DEVICE,
    Bound,
    memory_refusal,
)
from gateway.outbox.queueclock import QueueClock, is_expired, resumed
from gateway.outbox.space import MIB, DiskSpace, effective_reserve, segment_size, space_refusal

ROOT = Path(__file__).resolve().parents[2]
PURE = ["segment.py", "queueclock.py", "bounds.py", "committer.py"]
FORBIDDEN = ("asyncio", "socket", "ssl", "sqlalchemy", "aiohttp", "time", "os", "pathlib")


@pytest.mark.parametrize("name", PURE)
def test_decision_modules_do_no_io_and_read_no_clock(name: str) -> None:
    tree = ast.parse((ROOT / "gateway" / "outbox" / name).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            modules = [node.module or ""]
        else:
            continue
        for module in modules:
            assert module.split(".")[0] not in FORBIDDEN, f"{name} imports {module}"


@pytest.mark.parametrize(
    ("configured", "total", "reserve"),
    [
        (64 * MIB, 32 * 1024 * MIB, 64 * MIB),  # a big disk: the configured reserve
        (64 * MIB, 8 * MIB, 1 * MIB),  # the 8 MiB drill: an eighth would be 1 MiB
        (64 * MIB, 4 * MIB, 1 * MIB),  # never under MIN_RESERVE
        (0, 32 * 1024 * MIB, 1 * MIB),
        (512 * MIB, 2 * 1024 * MIB, 256 * MIB),  # at most an eighth of the file system
    ],
)
def test_effective_reserve(configured: int, total: int, reserve: int) -> None:
    assert effective_reserve(configured, total) == reserve


@pytest.mark.parametrize(("total", "size"), [(8 * MIB, 256 * 1024), (1024**4, 8 * MIB), (MIB, 64 * 1024)])
def test_segment_size(total: int, size: int) -> None:
    assert segment_size(total) == size


@pytest.mark.parametrize(
    ("free", "unwritten", "payload", "refused"),
    [
        (2 * MIB, 0, 1000, False),
        (MIB + 1000, 0, 1000, False),  # exactly the reserve left
        (MIB + 999, 0, 1000, True),
        (2 * MIB, MIB, 1, True),  # what is queued for the disk counts
        (0, 0, 1, True),
    ],
)
def test_space_refusal(free: int, unwritten: int, payload: int, refused: bool) -> None:
    why = space_refusal(DiskSpace(8 * MIB, free), MIB, unwritten, payload)
    assert (why is not None) is refused
    if why is not None:
        assert "keeps 1048576 free" in why


@pytest.mark.parametrize(
    ("pending", "device", "qos", "payload", "bound"),
    [
        (0, 0, 1, 100, None),
        (MAX_PENDING_BYTES - 100, 0, 1, 100, None),
        (MAX_PENDING_BYTES - 99, 0, 1, 100, Bound.PENDING_BYTES),
        (0, MAX_PENDING_QOS0_BYTES_PER_DEVICE, 1, 100, None),  # QoS 1 is paced by the front door's window
        (0, MAX_PENDING_QOS0_BYTES_PER_DEVICE - 100, 0, 100, None),
        (0, MAX_PENDING_QOS0_BYTES_PER_DEVICE - 99, 0, 100, Bound.PENDING_BYTES),
    ],
)
def test_memory_refusal(pending: int, device: int, qos: int, payload: int, bound: Bound | None) -> None:
    why = memory_refusal(pending, device, qos, payload)
    assert (why.bound if why else None) is bound


@pytest.mark.parametrize(
    ("queued_at", "now", "ttl", "expired"),
    [
        (0.0, 100.0, 100.0, False),  # exactly at its time-to-live
        (0.0, 100.5, 100.0, True),
        (50.0, 10.0, 1.0, False),  # a reading from "before" (never ages backwards)
        (0.0, 1e12, None, False),  # forever
    ],
)
def test_is_expired(queued_at: float, now: float, ttl: float | None, expired: bool) -> None:
    assert is_expired(queued_at, now, ttl) is expired


def test_the_queue_clock_resumes_and_never_runs_backwards() -> None:
    clock = resumed(3600.0, monotonic=5.0)
    assert clock == QueueClock(3600.0, 5.0)
    assert clock.now(65.0) == 3660.0
    assert clock.now(1.0) == 3600.0  # a monotonic reading older than the anchor does not age anything
    assert resumed(-5.0, 0.0).now(0.0) == 0.0


def test_runs_of_sequences() -> None:
    assert list(segment.runs_of([5, 1, 2, 3, 7, 8, 3])) == [(1, 3), (5, 1), (7, 2)]
    assert list(segment.runs_of([])) == []


MESSAGE = segment.MessageRecord(1, 2, 3, 1, 1_800_000_000.25, b'{"a":"1"}', b"\x00payload\xff")


@pytest.mark.parametrize(
    "record",
    [
        segment.StringRecord(7, "devices/sensör-1/messages/events/"),
        segment.ClockRecord(123.5, 1_800_000_000.0),
        MESSAGE,
        segment.MessageRecord(0, 0, 0, 0, 0.0, b"", b"", "dead0000000000000000000000000001"),
        segment.MessageRecord(0, 0, 0, 1, 0.0, b'{"k":"' + b"v" * 3000 + b'"}', b"p", "dead02"),  # long bag
        segment.RemovedRecord(segment.Removal.DEAD_LETTER, ((1, 3), (9, 1))),
    ],
)
def test_records_round_trip(record: segment.Record) -> None:
    if isinstance(record, segment.StringRecord):
        blob = segment.encode_string(record.ref, record.text)
    elif isinstance(record, segment.ClockRecord):
        blob = segment.encode_clock(record.queue_clock, record.wall_clock)
    elif isinstance(record, segment.MessageRecord):
        blob = segment.encode_message(record)
    else:
        blob = segment.encode_removed(record.why, [1, 2, 3, 9])
    decoded = segment.decode(blob)
    assert decoded.problem is None
    assert [r for _, _, r in decoded.records] == [record]
    assert decoded.good_until == len(blob)


def test_a_100_byte_message_costs_26_bytes_of_record() -> None:
    blob = segment.encode_message(segment.MessageRecord(1, 2, 3, 1, 0.0, b"", b"x" * 100))
    assert len(blob) == 126


def test_every_torn_tail_keeps_exactly_the_whole_records_before_it() -> None:
    blobs = [segment.encode_string(0, "d"), segment.encode_clock(1.0, 2.0), segment.encode_message(MESSAGE),
             segment.encode_removed(segment.Removal.DELIVERED, [1])]
    data = b"".join(blobs)
    ends = [sum(len(b) for b in blobs[:n]) for n in range(len(blobs) + 1)]
    for cut in range(len(data) + 1):  # fed byte by byte: a crash can stop an append anywhere
        decoded = segment.decode(data[:cut])
        whole = max(e for e in ends if e <= cut)
        assert decoded.good_until == whole
        assert len(decoded.records) == ends.index(whole)
        assert (decoded.problem is None) is (cut == whole)


def test_flipped_bytes_never_pass_as_a_record() -> None:
    """Invariant: decoding never raises, and stops at the start of the damaged record (its length or
    checksum no longer add up), so nothing at or after the damage is ever handed out."""
    data = b"".join([segment.encode_message(MESSAGE)] * 4)
    rng = random.Random(13)
    for _ in range(500):
        damaged = bytearray(data)
        at = rng.randrange(len(damaged))
        damaged[at] ^= 1 << rng.randrange(8)
        decoded = segment.decode(bytes(damaged))
        assert decoded.good_until <= at
        assert decoded.problem is not None
        assert all(offset + length <= at and r == MESSAGE for offset, length, r in decoded.records)


def test_check_and_status_say_what_the_outbox_promises() -> None:
    forever = checks.outbox_promise(None, "fsync", 1024**3)
    assert forever.status is checks.Status.OK
    assert "for as long as it takes" in forever.detail
    light = checks.outbox_promise(timedelta(hours=2), "process", 1024**3)
    assert light.status is checks.Status.WARN
    assert "7200 s of queued time" in light.detail
    assert "NOT a power cut" in light.detail
    assert checks.state_dir_writable(Path("/s"), "read-only").status is checks.Status.FAIL
    lines = outbox_lines({"time_to_live_seconds": None, "durability": "process", "dead_letters": 2,
                          "requeue_requested": 1, "live": {"refusing": "disk full", "state_problems": ["lost db"]}})
    text = "\n".join(lines)
    assert 'for as long as it takes (time_to_live = "forever")' in text
    assert "survives a gateway crash, NOT a power cut" in text
    assert "dead letters 2 refused by the hub for good (1 waiting to be re-queued)" in text
    assert "REFUSING NEW MESSAGES: disk full" in text
    assert "STATE LOST   lost db" in text

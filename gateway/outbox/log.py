"""The outbox's append-only segment log: files, offsets and the in-memory index over them.

Layout: `<state_dir>/outbox/<first seq, 20 digits>.seg`, each a MAGIC, an 8-byte random nonce, then
records (segment.py). Messages are only ever appended to the newest segment (the tail); removing a
message appends a small REMOVED record and clears a flag in memory; a segment whose messages are all
gone is deleted whole, oldest first, which is how space comes back on a full disk. Nothing is ever
rewritten in place, so one message costs its own bytes plus a share of one page per commit.

Threads: the index (`Segment` arrays, counts) belongs to the event loop thread. `prepare` (loop) turns a
commit into a `WritePlan` without changing anything; `write` (the writer thread) appends it and, with
`durability="fsync"`, fdatasyncs it, or truncates it away on failure; `apply` (loop) then updates the
index. Reads and segment deletions run on one reader thread, so a file is never closed under a read.
Message ids are `<segment nonce><seq>` in hex: unique without storing one per message, and stable
across restarts (a resend after a crash carries the same id, which the hub deduplicates).
"""

from __future__ import annotations

import logging
import os
import secrets
from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from gateway.outbox.segment import (
    MAGIC,
    MAX_STRINGS,
    ClockRecord,
    MessageRecord,
    Removal,
    RemovedRecord,
    StringRecord,
    decode,
    decode_message_at,
    encode_clock,
    encode_message_fields,
    encode_removed,
    encode_string,
)

log = logging.getLogger("edgegate.outbox")

Durability = Literal["fsync", "process"]
HEADER = len(MAGIC) + 8
SUFFIX = ".seg"


@dataclass(slots=True)
class Segment:
    """One segment file and the index of its messages (entry i is seq first_seq + i)."""

    first_seq: int
    path: Path
    nonce: str
    fd: int = -1
    size: int = HEADER
    offsets: array[int] = field(default_factory=lambda: array("Q"))
    lengths: array[int] = field(default_factory=lambda: array("I"))
    sizes: array[int] = field(default_factory=lambda: array("I"))  # payload bytes
    devices: array[int] = field(default_factory=lambda: array("I"))  # index into SegmentLog.device_names
    queued: array[float] = field(default_factory=lambda: array("d"))  # queue clock at commit
    live: bytearray = field(default_factory=bytearray)
    live_count: int = 0
    first_live: int = 0  # no live entry before this index
    texts: list[str] = field(default_factory=list)  # interned strings, by ref
    refs: dict[str, int] = field(default_factory=dict)

    @property
    def end_seq(self) -> int:
        return self.first_seq + len(self.offsets)

    def message_id(self, seq: int) -> str:
        return f"{self.nonce}{seq:016x}"


# Not frozen for the same reason as gateway.records.InboundMessage: one is built per message.
@dataclass(slots=True)
class NewMessage:
    device_id: str
    kind: str
    topic: str
    qos: int
    enqueued_at: float
    properties: bytes
    payload: bytes
    message_id: str | None = None


@dataclass(slots=True)
class WritePlan:
    """One commit, encoded: appended to `segment` (created first when `create`)."""

    segment: Segment
    create: bool
    blob: bytes
    first_offset: int
    new_strings: dict[str, int]
    # One entry per message, column by column (appended to the segment's index as they are).
    offsets: list[int]
    lengths: list[int]  # framed record length
    sizes: list[int]  # payload bytes
    devices: list[int]  # index into SegmentLog.device_names
    queue_clock: float
    seqs: list[int]


class SegmentLog:
    """The segments of one outbox directory. `recover()` once (a thread), then the loop drives it."""

    def __init__(self, directory: Path, *, durability: Durability = "fsync", segment_bytes: int = 8 * 1024**2) -> None:
        self.directory, self.durability, self.segment_bytes = directory, durability, segment_bytes
        self.segments: list[Segment] = []
        self.device_names: list[str] = []
        self._device_ix: dict[str, int] = {}
        self.queue_clock = 0.0  # the newest queue-clock reading found on disk
        self.fdatasyncs = 0
        self.problems: list[str] = []  # what recovery had to repair, for the log and status

    # ---- start-up (a thread) --------------------------------------------------------------------

    def recover(self) -> None:
        """Read every segment, cut a torn tail, apply removals; leaves a writable tail segment."""
        self.directory.mkdir(parents=True, exist_ok=True)
        paths = sorted(self.directory.glob(f"*{SUFFIX}"), key=lambda p: p.name)
        removed: list[RemovedRecord] = []
        for n, path in enumerate(paths):
            last = n == len(paths) - 1
            segment = self._load(path, last, removed)
            if segment is not None:
                self.segments.append(segment)
        for record in removed:
            for first, count in record.runs:
                self._clear(first, count)
        for segment in self.segments:
            segment.live_count = segment.live.count(1)
            if segment.fd < 0:
                segment.fd = os.open(segment.path, os.O_RDWR)
        if not self.segments:
            return
        # Every segment but the tail whose messages are all gone can go now.
        self._reap_head()

    def _load(self, path: Path, last: bool, removed: list[RemovedRecord]) -> Segment | None:
        try:
            first_seq = int(path.stem)
        except ValueError:
            self.problems.append(f"{path.name}: not a segment name, left alone")
            return None
        data = path.read_bytes()
        if len(data) < HEADER or not data.startswith(MAGIC):
            if last and len(data) < HEADER:  # a crash while the file was being created
                path.unlink()
                return None
            self.problems.append(f"{path.name}: not an outbox segment (bad header); left alone")
            return None
        segment = Segment(first_seq, path, data[len(MAGIC):HEADER].hex())
        decoded = decode(data, HEADER)
        queued = 0.0
        for offset, length, record in decoded.records:
            if isinstance(record, MessageRecord):
                self._index(segment, offset, length, len(record.payload), segment.texts[record.device], queued)
            elif isinstance(record, ClockRecord):
                queued = record.queue_clock
                self.queue_clock = max(self.queue_clock, queued)
            elif isinstance(record, StringRecord):
                segment.texts.append(record.text)
                segment.refs[record.text] = record.ref
            else:
                removed.append(record)
        segment.size = decoded.good_until
        if decoded.problem is not None:
            if last:
                log.warning("outbox segment %s ends in a torn record (a crash mid-write): %s; cut there",
                            path.name, decoded.problem)
                os.truncate(path, decoded.good_until)
            else:
                self.problems.append(f"{path.name}: {decoded.problem}; the records after it are lost")
        return segment

    # ---- the index (event loop thread) ----------------------------------------------------------

    def _device_index(self, device_id: str) -> int:
        ix = self._device_ix.get(device_id)
        if ix is None:
            ix = self._device_ix[device_id] = len(self.device_names)
            self.device_names.append(device_id)
        return ix

    def _index(self, segment: Segment, offset: int, length: int, size: int, device_id: str, queued: float) -> None:
        ix = self._device_index(device_id)
        segment.offsets.append(offset)
        segment.lengths.append(length)
        segment.sizes.append(size)
        segment.devices.append(ix)
        segment.queued.append(queued)
        segment.live.append(1)

    @property
    def next_seq(self) -> int:
        return self.segments[-1].end_seq if self.segments else 1

    def locate(self, seq: int) -> tuple[Segment, int] | None:
        for segment in reversed(self.segments):
            if seq >= segment.first_seq:
                index = seq - segment.first_seq
                return (segment, index) if index < len(segment.offsets) else None
        return None

    def _clear(self, first: int, count: int) -> list[tuple[str, int]]:
        """Mark seqs first..first+count-1 removed; (device id, payload size) of each that was live."""
        gone: list[tuple[str, int]] = []
        end = first + count
        names = self.device_names
        for segment in self.segments:
            low, high = max(first, segment.first_seq), min(end, segment.end_seq)
            if low >= high:
                continue
            live, sizes, devices, base = segment.live, segment.sizes, segment.devices, segment.first_seq
            for index in range(low - base, high - base):
                if live[index]:
                    live[index] = 0
                    segment.live_count -= 1
                    gone.append((names[devices[index]], sizes[index]))
        return gone

    def clear(self, seqs: Iterable[int]) -> list[tuple[str, int]]:
        """`_clear` for any seqs, a run of consecutive ones at a time (a delivered batch is mostly one run)."""
        gone: list[tuple[str, int]] = []
        start = end = -1
        for seq in seqs:
            if seq == end:
                end += 1
                continue
            if end > start:
                gone += self._clear(start, end - start)
            start, end = seq, seq + 1
        if end > start:
            gone += self._clear(start, end - start)
        return gone

    def live(self, after: int, limit: int, max_bytes: int | None) -> list[tuple[Segment, int]]:
        """Up to `limit` live (segment, index) with seq > after, in seq order, within `max_bytes`
        of payload (but always the first)."""
        out: list[tuple[Segment, int]] = []
        size = 0
        for segment in self.segments:
            if segment.end_seq <= after:
                continue
            while segment.first_live < len(segment.live) and not segment.live[segment.first_live]:
                segment.first_live += 1
            index = max(segment.first_live, after + 1 - segment.first_seq)
            live = segment.live
            while index < len(live):
                if live[index]:
                    size += segment.sizes[index]
                    if max_bytes is not None and size > max_bytes and out:
                        return out
                    out.append((segment, index))
                    if len(out) >= limit:
                        return out
                index += 1
        return out

    def oldest_live(self) -> Iterable[tuple[Segment, int]]:
        """Every live (segment, index), oldest first (expiry walks this until the first young one)."""
        for segment in self.segments:
            for index in range(segment.first_live, len(segment.live)):
                if segment.live[index]:
                    yield segment, index

    def reapable(self) -> list[Segment]:
        """Head segments (never the tail) with no live message: delete them, oldest first."""
        done: list[Segment] = []
        for segment in self.segments[:-1]:
            if segment.live_count:
                break
            done.append(segment)
        if done:
            del self.segments[:len(done)]
        return done

    def _reap_head(self) -> None:
        for segment in self.reapable():
            self.reap([segment])

    # ---- commits ----------------------------------------------------------------------------------

    def prepare(self, messages: list[NewMessage], removals: dict[Removal, list[int]], queue_clock: float,
                wall_clock: float) -> WritePlan:
        """Encode one commit (CLOCK, new STRINGs, MESSAGEs, REMOVEDs) without changing the index."""
        tail = self.segments[-1] if self.segments else None
        body_guess = sum(len(m.payload) + 64 for m in messages)
        create = (tail is None or (messages and tail.offsets and tail.size + body_guess > self.segment_bytes)
                  or (tail is not None and len(tail.texts) + 3 * len(messages) > MAX_STRINGS))
        if create or tail is None:
            seq = self.next_seq
            segment = Segment(seq, self.directory / f"{seq:020d}{SUFFIX}", secrets.token_hex(8))
            create = True
        else:
            segment = tail
        new_strings: dict[str, int] = {}
        parts = [encode_clock(queue_clock, wall_clock)]
        at = segment.size + len(parts[0])
        offsets: list[int] = []
        lengths: list[int] = []
        sizes: list[int] = []
        devices: list[int] = []

        def ref(text: str) -> int:
            nonlocal at
            found = segment.refs.get(text, new_strings.get(text))
            if found is not None:
                return found
            found = new_strings[text] = len(segment.texts) + len(new_strings)
            blob = encode_string(found, text)
            parts.append(blob)
            at += len(blob)
            return found

        # One device's messages usually share device, kind and topic: look their refs up once a run.
        last: tuple[str, str, str] | None = None
        refs = (0, 0, 0)
        device_ix = 0
        for m in messages:
            if last is None or m.topic != last[2] or m.device_id != last[0] or m.kind != last[1]:
                last = (m.device_id, m.kind, m.topic)
                refs = (ref(m.device_id), ref(m.kind), ref(m.topic))
                device_ix = self._device_index(m.device_id)
            blob = encode_message_fields(refs[0], refs[1], refs[2], m.qos, m.enqueued_at, m.properties, m.payload,
                                         m.message_id)
            offsets.append(at)
            lengths.append(len(blob))
            sizes.append(len(m.payload))
            devices.append(device_ix)
            parts.append(blob)
            at += len(blob)
        for why, seqs in removals.items():
            if seqs:
                blob = encode_removed(why, seqs)
                parts.append(blob)
                at += len(blob)
        first = segment.end_seq if not create else segment.first_seq
        return WritePlan(segment, create, b"".join(parts), segment.size, new_strings, offsets, lengths, sizes, devices,
                         queue_clock, list(range(first, first + len(offsets))))

    def write(self, plan: WritePlan) -> None:
        """Append the plan (the writer thread); on any failure nothing of it stays on disk (OSError raised)."""
        segment = plan.segment
        if plan.create:
            fd = os.open(segment.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                _write_all(fd, MAGIC + bytes.fromhex(segment.nonce) + plan.blob)
                if self.durability == "fsync":
                    os.fdatasync(fd)
                    _sync_directory(self.directory)
                    self.fdatasyncs += 2
            except OSError:
                os.close(fd)
                segment.path.unlink(missing_ok=True)
                raise
            segment.fd = fd
            return
        try:
            _write_all(segment.fd, plan.blob, plan.first_offset)
            if self.durability == "fsync":
                os.fdatasync(segment.fd)
                self.fdatasyncs += 1
        except OSError:
            try:
                os.ftruncate(segment.fd, plan.first_offset)
            except OSError as exc:
                log.error("could not cut a failed append off outbox segment %s: %s", segment.path.name, exc)
            raise

    def apply(self, plan: WritePlan) -> None:
        """The plan is on disk: index its messages (event loop thread)."""
        segment = plan.segment
        if plan.create:
            self.segments.append(segment)
        for text, ref in sorted(plan.new_strings.items(), key=lambda item: item[1]):
            segment.texts.append(text)
            segment.refs[text] = ref
        count = len(plan.offsets)
        segment.offsets.extend(plan.offsets)
        segment.lengths.extend(plan.lengths)
        segment.sizes.extend(plan.sizes)
        segment.devices.extend(plan.devices)
        segment.queued.extend([plan.queue_clock] * count)
        segment.live.extend(b"\x01" * count)
        segment.live_count += count
        segment.size = plan.first_offset + len(plan.blob) if not plan.create else HEADER + len(plan.blob)
        self.queue_clock = max(self.queue_clock, plan.queue_clock)

    # ---- reads and deletions (the reader thread) --------------------------------------------------

    def read(self, wanted: list[tuple[Segment, int]]) -> list[tuple[Segment, int, MessageRecord]]:
        """The records of `wanted` (from `live`), one pread per segment run."""
        out: list[tuple[Segment, int, MessageRecord]] = []
        n = 0
        while n < len(wanted):
            segment = wanted[n][0]
            run_end = n
            while run_end + 1 < len(wanted) and wanted[run_end + 1][0] is segment:
                run_end += 1
            start = segment.offsets[wanted[n][1]]
            last = wanted[run_end][1]
            data = os.pread(segment.fd, segment.offsets[last] + segment.lengths[last] - start, start)
            for _, index in wanted[n:run_end + 1]:
                at = segment.offsets[index] - start
                out.append((segment, index, decode_message_at(data[at:at + segment.lengths[index]])))
            n = run_end + 1
        return out

    def reap(self, segments: list[Segment]) -> None:
        """Delete segments `reapable` handed out (on the reader thread, after every earlier read)."""
        for segment in segments:
            if segment.fd >= 0:
                os.close(segment.fd)
                segment.fd = -1
            segment.path.unlink(missing_ok=True)

    def close(self) -> None:
        for segment in self.segments:
            if segment.fd >= 0:
                os.close(segment.fd)
                segment.fd = -1

    def disk_bytes(self) -> int:
        return sum(segment.size for segment in self.segments)


def _write_all(fd: int, data: bytes, offset: int | None = None) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view) if offset is None else os.pwrite(fd, view, offset)
        if offset is not None:
            offset += written
        view = view[written:]


def _sync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

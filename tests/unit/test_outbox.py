"""The outbox on its segment log (a real directory): group commit, fairness, bounds, free space, time-to-live
on the queue clock, failed writes, torn tails and restarts, the dead-letter table and its migration."""

from __future__ import annotations

import asyncio
import errno
import gc
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine

from gateway.db.engine import open_engine, upgrade
from gateway.db.table_modules import load_table_modules
from gateway.errors import OutboxFull, StorageError
from gateway.outbox import log as segment_log
from gateway.outbox import store
from gateway.outbox.bounds import MAX_PENDING_QOS0_BYTES_PER_DEVICE, Bound, OutboxLimits, refusal
from gateway.outbox.dead_letters import DeadLetters
from gateway.outbox.space import DiskSpace
from gateway.outbox.store import EAGER_PENDING as EAGER
from gateway.outbox.store import PAUSE_PENDING_BYTES, Outbox
from gateway.records import InboundMessage
from gateway.service.supervisor import TaskState

T0 = 1_800_000_000.0
SMALL = OutboxLimits(time_to_live=100, max_messages=50, max_bytes=10_000, per_device_max_messages=20)
ROOMY = DiskSpace(10 * 1024**3, 5 * 1024**3)


class Clock:
    """The monotonic clock the queue clock advances with."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Disk:
    """What statvfs answers (the real one is used by the integration tests on a small tmpfs)."""

    def __init__(self, space: DiskSpace = ROOMY) -> None:
        self.space = space

    def __call__(self, _path: Path) -> DiskSpace:
        return self.space


def msg(device: str, n: int, *, at: float = T0, size: int = 10, qos: int = 1) -> InboundMessage:
    return InboundMessage(device, "telemetry", f"devices/{device}/messages/events/", str(n).encode().ljust(size),
                          qos, (("n", str(n)),), at)


def numbers(rows: list[store.QueuedMessage]) -> list[int]:
    return [int(r.payload) for r in rows]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def disk() -> Disk:
    return Disk()


def make(directory: Path, limits: OutboxLimits = SMALL, **options: Any) -> Outbox:
    options.setdefault("commit_interval", 0)
    options.setdefault("space", Disk())
    return Outbox(directory, limits, **options)


@pytest.fixture
async def outbox(tmp_path: Path, clock: Clock, disk: Disk) -> AsyncIterator[Outbox]:
    box = make(tmp_path / "outbox", monotonic=clock, space=disk)
    await box.open()
    yield box
    await box.close()


# -- bounds, a pure decision ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("messages", "size", "device", "payload", "expected"),
    [
        (0, 0, 0, 10, None),
        (49, 9_990, 19, 10, None),  # every bound reached exactly, none passed
        (50, 0, 0, 10, Bound.MAX_MESSAGES),
        (0, 9_991, 0, 10, Bound.MAX_BYTES),
        (0, 0, 0, 10_001, Bound.MAX_BYTES),  # one message bigger than the whole outbox
        (0, 0, 20, 10, Bound.PER_DEVICE_MAX_MESSAGES),
        (50, 10_000, 20, 10, Bound.MAX_MESSAGES),  # the first bound that fails is reported
    ],
)
def test_refusal_table(messages: int, size: int, device: int, payload: int, expected: Bound | None) -> None:
    why = refusal(SMALL, messages, size, device, payload)
    assert (why.bound if why else None) is expected
    if why is not None:
        assert expected is not None
        assert expected.value in why.message


# -- group commit and fairness -----------------------------------------------------------------------


async def test_a_burst_is_committed_in_batches(tmp_path: Path) -> None:
    box = make(tmp_path / "ob", OutboxLimits(), max_batch=512)
    await box.open()
    try:
        futures = [box.submit(msg(f"d{i % 3}", i)) for i in range(2000)]  # queued before the writer runs
        await asyncio.gather(*futures)
        assert box.commits == 4  # 512 + 512 + 512 + 464: one append (one fdatasync) each
        assert box.largest_batch == 512
        assert box.counters.get("edgegate_outbox_committed_total") == 2000
        assert sorted(numbers(await box.peek(5000))) == list(range(2000))
    finally:
        await box.close()


async def test_the_linger_lets_a_trickle_share_one_commit(tmp_path: Path) -> None:
    box = make(tmp_path / "ob", OutboxLimits(), commit_interval=0.2)
    await box.open()
    try:
        first = box.submit(msg("a", 1))
        await asyncio.sleep(0.01)
        second = box.submit(msg("b", 2))  # arrives while the first one lingers
        await asyncio.gather(first, second)
        assert box.commits == 1
        assert box.log.fdatasyncs == 2  # the new segment file and its directory
        assert (box.status()["lingers"], box.status()["lingers_fruitless"]) == (1, 0)
    finally:
        await box.close()


async def test_devices_taking_turns_are_not_held_back_by_lingers_that_gather_nobody(tmp_path: Path) -> None:
    """Two devices that each wait for their PUBACK, taking turns: neither was in the commit before its own,
    so each message looked worth a linger, and every one waited the whole commit_interval for nobody.
    After a fruitless linger the next commits skip theirs, doubling."""
    box = make(tmp_path / "ob", OutboxLimits(), commit_interval=0.2)
    await box.open()
    try:
        for i in range(20):
            await asyncio.wait_for(box.submit(msg("ab"[i % 2], i)), 10)
        assert box.commits == 20
        status = box.status()
        assert (status["lingers"], status["lingers_fruitless"]) == (5, 5)  # before messages 1, 3, 6, 11 and 20
    finally:
        await box.close()


async def test_a_lone_publisher_is_not_held_back_by_the_linger(tmp_path: Path) -> None:
    box = make(tmp_path / "ob", OutboxLimits(), commit_interval=60)  # a linger no test would wait out
    await box.open()
    try:
        await asyncio.wait_for(asyncio.gather(*(box.submit(msg("a", i)) for i in range(EAGER))), 10)  # eager
        for i in range(3):  # then one at a time: it alone filled the last commit, so nobody is waited for
            await asyncio.wait_for(box.submit(msg("a", 100 + i)), 10)
        assert box.commits == 4
    finally:
        await box.close()


async def test_devices_in_step_with_the_commits_are_not_held_back_by_the_linger(tmp_path: Path) -> None:
    """Ten publishers, each sending as its PUBACKs come back: every device waiting was in the last commit,
    so a linger would gather nobody and only delay them all (bench.hotpath --publishers 10)."""
    box = make(tmp_path / "ob", OutboxLimits(), commit_interval=60)  # a linger no test would wait out
    await box.open()
    try:
        devices = [f"d{n}" for n in range(3)]
        await asyncio.wait_for(asyncio.gather(*(box.submit(msg(d, i)) for d in devices for i in range(EAGER))), 10)
        for i in range(3):  # then one message each per round, as if each waited for its PUBACK
            await asyncio.wait_for(asyncio.gather(*(box.submit(msg(d, 100 + i)) for d in devices)), 10)
        assert box.commits == 4
    finally:
        await box.close()


@pytest.mark.parametrize(
    ("waiting", "last_commit", "linger"),
    [
        ([], [], False),
        (["a"], [], True),  # the first commit: a trickle may be starting
        (["a"], ["a"], False),  # a lone publisher in step with its own commits
        (["a", "b"], ["a", "b", "c"], False),  # a closed group in step
        (["a", "z"], ["a", "b"], True),  # a device the last commit did not have: the fleet's trickle
        (["z"], ["a", "b"], True),
    ],
)
def test_worth_lingering(waiting: list[str], last_commit: list[str], linger: bool) -> None:
    from gateway.outbox.committer import worth_lingering

    assert worth_lingering(waiting, frozenset(last_commit)) is linger


@pytest.mark.parametrize(
    ("gathered", "decisions"),
    [
        # what each linger gathered -> whether each commit, all worth lingering, lingered ("L") or not (".")
        ([1, 1, 1], "LLL"),  # a fleet's trickle: every linger gathers, every commit lingers
        ([0, 0, 0, 0], "L.L..L....L"),  # nobody, ever: skip 1, 2, 4 ...
        ([0, 3, 0], "L.LL."),  # one linger that gathers ends the back-off at once
        ([0] * 8, "L" + "".join("." * min(2**n, 32) + "L" for n in range(7))),  # capped at LINGER_SKIP_MAX
    ],
)
def test_linger_policy_backs_off_after_lingers_that_gather_nothing(gathered: list[int], decisions: str) -> None:
    from gateway.outbox.committer import LINGER_SKIP_MAX, LingerPolicy

    assert LINGER_SKIP_MAX == 32
    policy = LingerPolicy()
    seen = ""
    results = iter(gathered)
    while len(seen) < len(decisions):
        lingers = policy.decide(["z"], frozenset(["a"]))
        seen += "L" if lingers else "."
        if lingers:
            policy.lingered(next(results))
    assert seen == decisions
    assert (policy.lingers, policy.lingers_fruitless) == (len(gathered), gathered.count(0))


def test_linger_policy_never_lingers_where_worth_lingering_says_no() -> None:
    from gateway.outbox.committer import LingerPolicy

    policy = LingerPolicy()
    policy.lingered(0)  # skip the next one
    assert not policy.decide(["a"], frozenset(["a"]))  # in step with its own commits: no skip used up
    assert policy.skip == 1


async def test_a_flooding_device_cannot_delay_another_past_one_commit(tmp_path: Path) -> None:
    box = make(tmp_path / "ob", OutboxLimits(), max_batch=100)
    await box.open()
    try:
        flood = [box.submit(msg("flooder", i)) for i in range(1000)]
        quiet = box.submit(msg("quiet", 5000))
        await quiet
        assert box.commits == 1  # the quiet device's message was in the very first commit
        await asyncio.gather(*flood)
        rows = await box.peek(2000)
        assert [int(r.payload) for r in rows if r.device_id == "flooder"] == list(range(1000))  # order kept
    finally:
        await box.close()


def test_fair_queue_takes_round_robin_and_at_least_one_from_each() -> None:
    from gateway.outbox.committer import FairQueue

    queue: FairQueue[str] = FairQueue()
    for n in range(5):
        queue.put("a", f"a{n}", 10)
    queue.put("b", "b0", 3)
    queue.put("c", "c0", 4)
    assert queue.pending_bytes("a") == 50
    assert queue.take(2) == ["a0", "b0", "c0"]  # the cap gives way to "one from every device"
    assert queue.take(3) == ["a1", "a2", "a3"]
    assert queue.pending_bytes("a") == 10
    assert (len(queue), queue.bytes) == (1, 10)
    assert queue.drain() == ["a4"]
    assert queue.pending_bytes("a") == 0


def test_fair_queue_caps_a_commit_by_payload_bytes_but_never_below_one_from_each() -> None:
    from gateway.outbox.committer import FairQueue

    queue: FairQueue[str] = FairQueue()
    for n in range(4):
        queue.put("flood", f"f{n}", 100_000, 50)
    queue.put("sensor", "s0", 100)
    assert queue.take(1024, 150_000) == ["f0", "s0", "f1"]  # one round whatever the cap, then up to it
    assert queue.take(1024, 150_000) == ["f2", "f3"]
    assert queue.drain() == []
    queue.put("flood", "big", 10_000_000, 1)
    assert queue.take(1024, 150_000) == ["big"]  # one item bigger than the cap still goes, alone


def test_fair_queue_counts_the_messages_in_an_item_toward_the_batch() -> None:
    from gateway.outbox.committer import FairQueue

    queue: FairQueue[str] = FairQueue()
    queue.put("a", "a-burst", 60, 6)
    queue.put("a", "a-next", 10, 1)
    queue.put("b", "b0", 10, 1)
    assert (queue.pending_count("a"), len(queue)) == (7, 8)
    assert queue.take(4) == ["a-burst", "b0"]  # a whole item, never split; b still rides along
    assert queue.take(4) == ["a-next"]
    assert (len(queue), queue.bytes) == (0, 0)


async def test_rows_read_back_in_order_with_unique_stable_ids(tmp_path: Path) -> None:
    box = make(tmp_path / "ob")
    await box.open()
    await asyncio.gather(*(box.submit(msg(f"d{i % 3}", i)) for i in range(30)))
    rows = await box.peek(100)
    assert sorted(numbers(rows)) == list(range(30))
    assert [r.seq for r in rows] == sorted(r.seq for r in rows)
    first = rows[0]
    assert first.properties == {"n": "0"}
    assert first.topic == "devices/d0/messages/events/"
    assert first.kind == "telemetry"
    assert (first.qos, first.enqueued_at) == (1, T0)
    assert len({r.message_id for r in rows}) == 30
    assert numbers(await box.peek(5, after=rows[9].seq)) == numbers(rows[10:15])
    assert await box.remove(rows[:10]) == 10
    assert box.depth() == {"messages": 20, "bytes": 200, "devices": 3}
    await box.close()
    again = make(tmp_path / "ob")
    await again.open()
    try:
        assert [(r.seq, r.message_id) for r in await again.peek(100)] == [(r.seq, r.message_id) for r in rows[10:]]
    finally:
        await again.close()


# -- what a commit stored, kept for the forwarder's next peek ------------------------------------------


class CountedReads:
    """Wraps SegmentLog.read: which seqs the forwarder's peeks had to read back from disk."""

    def __init__(self, box: Outbox) -> None:
        self.seqs: list[int] = []
        self._read = box.log.read
        box.log.read = self  # type: ignore[method-assign]

    def __call__(self, wanted: list[tuple[segment_log.Segment, int]]) -> Any:
        self.seqs += [s.first_seq + i for s, i in wanted]
        return self._read(wanted)


def fields(rows: list[store.QueuedMessage]) -> list[tuple[Any, ...]]:
    return [(r.seq, r.message_id, r.device_id, r.kind, r.topic, r.properties, r.payload, r.qos, r.enqueued_at)
            for r in rows]


async def test_a_forwarder_keeping_up_reads_nothing_back_and_gets_what_the_disk_holds(tmp_path: Path) -> None:
    box = make(tmp_path / "ob")
    await box.open()
    reads = CountedReads(box)
    assert await box.peek(100) == []  # the forwarder starts before anything arrives
    await asyncio.gather(*(box.submit(msg(f"d{i % 3}", i)) for i in range(20)),
                         box.submit(InboundMessage("d0", "telemetry", "devices/d0/messages/events/", b"bare", 0, (),
                                                   T0 + 0.123456)))
    kept = await box.peek(100)
    assert reads.seqs == []
    assert len(kept) == 21
    assert not box._fresh
    await box.close()
    again = make(tmp_path / "ob")  # the same messages, read back from disk after a restart
    await again.open()
    try:
        assert fields(await again.peek(100)) == fields(kept)
    finally:
        await again.close()


async def test_a_post_that_failed_peeks_the_same_messages_again_from_disk(outbox: Outbox) -> None:
    assert await outbox.peek(100) == []
    await asyncio.gather(*(outbox.submit(msg("d", i)) for i in range(5)))
    reads = CountedReads(outbox)
    first = await outbox.peek(100)
    second = await outbox.peek(100)  # the forwarder's retry: nothing was removed
    assert fields(second) == fields(first)
    assert reads.seqs == [r.seq for r in first]


async def test_past_its_bound_the_forwarder_reads_from_disk_in_commit_order(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store, "FRESH_BYTES", 3 * (10 + store.FRESH_OVERHEAD))
    box = make(tmp_path / "ob", OutboxLimits())
    await box.open()
    try:
        reads = CountedReads(box)
        assert await box.peek(100) == []
        for i in range(8):  # a commit each: the first three are kept, then there is no room
            await box.submit(msg("d", i))
        assert len(box._fresh) == 3
        rows = await box.peek(100)
        assert numbers(rows) == list(range(8))
        assert reads.seqs == [r.seq for r in rows[3:]]
        assert box._fresh == {}
        assert box._fresh_bytes == 0
    finally:
        await box.close()


async def test_nothing_is_kept_for_a_forwarder_that_never_peeks(outbox: Outbox) -> None:
    # A gateway with no [hub] has no forwarder: its outbox must not hold 2 MiB for nobody.
    await asyncio.gather(*(outbox.submit(msg("d", i)) for i in range(5)))
    assert outbox._fresh == {}
    assert outbox._fresh_bytes == 0


async def test_kept_messages_removed_or_passed_over_are_never_handed_out_or_kept(outbox: Outbox) -> None:
    assert await outbox.peek(100) == []
    await asyncio.gather(*(outbox.submit(msg("d", i)) for i in range(6)))
    rows = await outbox.peek(100)
    await outbox.remove(rows[:2])
    await asyncio.gather(*(outbox.submit(msg("d", 10 + i)) for i in range(3)))
    assert numbers(await outbox.peek(2, after=rows[-1].seq)) == [10, 11]  # the narrowing's peek past a batch
    assert list(outbox._fresh) == [rows[-1].seq + 3]  # what came before the first it wanted is forgotten
    assert numbers(await outbox.peek(100)) == [2, 3, 4, 5, 10, 11, 12]


@pytest.mark.parametrize(
    ("max_bytes", "expected"),
    [(None, [0, 1, 2, 3]), (10_000, [0, 1, 2, 3]), (250, [0, 1]), (299, [0, 1]), (300, [0, 1, 2]), (5, [0])],
)
async def test_peek_keeps_to_a_byte_budget_but_always_returns_one(outbox: Outbox, max_bytes: int | None,
                                                                  expected: list[int]) -> None:
    for i in range(4):
        await outbox.submit(msg("d", i, size=100))
    assert numbers(await outbox.peek(10, max_bytes=max_bytes)) == expected


async def test_qos0_is_stored_the_same_way_without_a_waiter(outbox: Outbox) -> None:
    outbox.submit(msg("d", 1, qos=0))
    await asyncio.wait_for(outbox.submit(msg("d", 2)), 30)
    assert [(r.qos, int(r.payload)) for r in await outbox.peek(10)] == [(0, 1), (1, 2)]


async def test_process_durability_never_calls_fdatasync(tmp_path: Path) -> None:
    box = make(tmp_path / "ob", durability="process")
    await box.open()
    try:
        await asyncio.gather(*(box.submit(msg("d", i)) for i in range(5)))
        assert box.log.fdatasyncs == 0
    finally:
        await box.close()


# -- bounds, memory and disk space ------------------------------------------------------------------------


async def test_full_outbox_refuses_new_keeps_old_and_counts_each_bound(outbox: Outbox) -> None:
    for i in range(20):
        outbox.submit(msg("chatty", i))
    with pytest.raises(OutboxFull, match="per_device_max_messages"):
        outbox.submit(msg("chatty", 99))
    await asyncio.gather(*(outbox.submit(msg(f"quiet{i}", i)) for i in range(30)))
    with pytest.raises(OutboxFull, match="max_messages 50"):
        outbox.submit(msg("another", 1))
    assert outbox.counters.get("edgegate_outbox_full_total", bound="per_device_max_messages") == 1
    assert outbox.counters.get("edgegate_outbox_full_total", bound="max_messages") == 1
    rows = await outbox.peek(100)
    assert len(rows) == 50
    await outbox.remove(rows[:1])
    await outbox.submit(msg("chatty", 100))  # room again once the hub took one


async def test_a_batch_is_taken_as_far_as_it_fits_one_message_at_a_time(outbox: Outbox) -> None:
    for i in range(15):
        outbox.submit(msg("chatty", i))
    batch = [msg("chatty", 100 + i) for i in range(8)]
    taken = outbox.submit_many(batch)  # per_device_max_messages is 20: five of eight fit
    assert taken.accepted == 5
    assert taken.committed is not None
    assert taken.refusal is not None
    assert "per_device_max_messages" in taken.refusal
    assert outbox.counters.get("edgegate_outbox_full_total", bound="per_device_max_messages") == 3
    await taken.committed
    assert sorted(numbers(await outbox.peek(100)))[-5:] == [100, 101, 102, 103, 104]
    nothing = outbox.submit_many([msg("chatty", 200)])
    assert (nothing.committed, nothing.accepted) == (None, 0)
    whole = outbox.submit_many([msg("other", i) for i in range(3)])
    assert whole.accepted == 3
    assert whole.refusal is None
    await whole.committed


async def test_a_batch_split_across_commits_resolves_once_all_of_it_is_stored(tmp_path: Path) -> None:
    box = make(tmp_path / "ob", OutboxLimits(), max_batch=4)
    await box.open()
    try:
        first = box.submit_many([msg("a", i) for i in range(3)])
        second = box.submit_many([msg("a", 10 + i) for i in range(3)])
        other = box.submit(msg("b", 1))
        await asyncio.gather(first.committed, second.committed, other)  # type: ignore[arg-type]
        assert numbers(await box.peek(100)) == [0, 1, 2, 1, 10, 11, 12]  # round-robin by batch, in order
    finally:
        await box.close()


async def test_low_disk_space_refuses_before_the_disk_is_full_and_recovers(outbox: Outbox, disk: Disk,
                                                                          clock: Clock) -> None:
    await outbox.submit(msg("d", 1))
    disk.space = DiskSpace(8 * 1024**2, 1024**2 + 10)  # an 8 MiB file system: the reserve is 1 MiB
    clock.now += 1
    with pytest.raises(OutboxFull, match="keeps 1048576 free"):
        outbox.submit(msg("d", 2))
    assert outbox.counters.get("edgegate_outbox_full_total", bound="disk_space") == 1
    assert outbox.status()["refusing"] is not None
    disk.space = DiskSpace(8 * 1024**2, 4 * 1024**2)
    clock.now += 1
    await outbox.submit(msg("d", 3))  # no restart needed


async def test_a_qos0_flood_is_dropped_past_its_memory_budget(tmp_path: Path) -> None:
    box = make(tmp_path / "ob", OutboxLimits())
    await box.open()
    try:
        dropped = 0
        for i in range(200):  # all before the writer runs: memory is all there is
            try:
                box.submit(msg("flooder", i, size=10_000, qos=0))
            except OutboxFull:
                dropped += 1
        assert dropped == 200 - MAX_PENDING_QOS0_BYTES_PER_DEVICE // 10_000
        assert box.pending_bytes("flooder") <= MAX_PENDING_QOS0_BYTES_PER_DEVICE
        assert box.counters.get("edgegate_outbox_full_total", bound="pending_bytes") == dropped
        await box.submit(msg("quiet", 1))  # another device is not refused
    finally:
        await box.close()


async def test_room_for_tells_the_front_door_when_to_stop_and_resume_reading(tmp_path: Path) -> None:
    box = make(tmp_path / "ob", OutboxLimits())
    await box.open()
    try:
        assert box.room_for("flooder") is None
        futures = [box.submit(msg("flooder", i, size=64 * 1024)) for i in range(4)]  # queued, not yet committed
        assert box.pending_bytes("flooder") == PAUSE_PENDING_BYTES
        pause = box.room_for("flooder")
        assert pause is not None
        assert box.room_for("quiet") is None  # only the device that filled its share is paused
        await asyncio.wait_for(pause, 10)  # resolves once the commit took them
        await asyncio.gather(*futures)
    finally:
        await box.close()


# -- time-to-live on the queue clock -----------------------------------------------------------------------


async def test_expiry_counts_time_queued_not_the_wall_clock(outbox: Outbox, clock: Clock) -> None:
    await outbox.submit(msg("d", 1, at=T0))
    await outbox.submit(msg("d", 2, at=T0 + 40 * 86400))  # the wall clock jumped 40 days: nothing ages
    assert await outbox.expire() == 0
    clock.now += 100  # at its time-to-live exactly
    assert await outbox.expire() == 0
    clock.now += 1
    assert numbers(await outbox.peek(10)) == []  # a read that meets expired messages sweeps them
    assert outbox.counters.get("edgegate_outbox_expired_total") == 2
    assert await outbox.expire() == 0
    assert outbox.depth() == {"messages": 0, "bytes": 0, "devices": 0}


async def test_queued_time_survives_a_restart(tmp_path: Path, clock: Clock) -> None:
    box = make(tmp_path / "ob", monotonic=clock)
    await box.open()
    await box.submit(msg("d", 1))
    clock.now += 60
    await box.submit(msg("d", 2))  # this commit records the queue clock at 60 s
    await box.close()
    clock.now = 5.0  # a reboot: the monotonic clock starts over
    again = make(tmp_path / "ob", monotonic=clock)
    await again.open()
    try:
        clock.now += 41  # 60 + 41 > 100 for the first message, 41 for the second
        assert await again.expire() == 1
        assert numbers(await again.peek(10)) == [2]
    finally:
        await again.close()


async def test_forever_never_expires(tmp_path: Path, clock: Clock) -> None:
    box = make(tmp_path / "ob", OutboxLimits(time_to_live=None), monotonic=clock)
    await box.open()
    try:
        await box.submit(msg("d", 1))
        clock.now += 10 * 365 * 86400
        assert await box.expire() == 0
        assert numbers(await box.peek(10)) == [1]
    finally:
        await box.close()


async def test_removing_messages_that_expired_meanwhile_does_not_count_them_twice(outbox: Outbox,
                                                                                   clock: Clock) -> None:
    await asyncio.gather(*(outbox.submit(msg("d", i)) for i in range(4)))
    in_flight = await outbox.peek(4)
    clock.now += 200
    await outbox.submit(msg("d", 9))
    assert await outbox.expire() == 4
    assert await outbox.remove(in_flight) == 0
    assert outbox.depth() == {"messages": 1, "bytes": 10, "devices": 1}


# -- failures -------------------------------------------------------------------------------------------


@pytest.fixture
def failing_disk(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """fdatasync fails with EIO while the list holds a 1 (an I/O error cannot be made real in a test)."""
    switch = [0]
    real = os.fdatasync

    def fdatasync(fd: int) -> None:
        if switch[0]:
            raise OSError(errno.EIO, "Input/output error")
        real(fd)

    monkeypatch.setattr(segment_log.os, "fdatasync", fdatasync)
    return switch


async def test_a_failed_commit_fails_the_futures_so_no_puback_is_sent(outbox: Outbox,
                                                                     failing_disk: list[int]) -> None:
    await outbox.submit(msg("d", 0))
    failing_disk[0] = 1
    futures = [outbox.submit(msg("d", i)) for i in range(1, 4)]
    for future in futures:
        with pytest.raises(StorageError, match="Input/output error"):
            await future
    assert outbox.depth() == {"messages": 1, "bytes": 10, "devices": 1}
    assert outbox.counters.get("edgegate_outbox_commit_failed_total") == 3
    with pytest.raises(OutboxFull, match="cannot write to disk"):
        outbox.submit(msg("d", 5))  # refused while the disk fails: no PUBACK, the device keeps it
    failing_disk[0] = 0
    await outbox.remove(await outbox.peek(10))  # a removal-only write, retried with back-off
    for _ in range(500):
        if outbox.status()["refusing"] is None:
            break
        await asyncio.sleep(0.01)
    await asyncio.wait_for(outbox.submit(msg("d", 7)), 10)
    assert numbers(await outbox.peek(10)) == [7]


async def test_a_failed_qos0_commit_leaves_no_unretrieved_exception(outbox: Outbox,
                                                                   failing_disk: list[int]) -> None:
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    await outbox.submit(msg("d", 0))
    failing_disk[0] = 1
    outbox.submit(msg("d", 1, qos=0))
    for _ in range(200):
        if outbox.counters.get("edgegate_outbox_commit_failed_total"):
            break
        await asyncio.sleep(0.01)
    assert outbox.counters.get("edgegate_outbox_commit_failed_total") == 1
    failing_disk[0] = 0
    gc.collect()
    await asyncio.sleep(0)
    assert reported == []


async def test_an_unexpected_error_in_a_commit_fails_it_and_the_writer_carries_on(
    outbox: Outbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = outbox.log.prepare

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(outbox.log, "prepare", broken)
    with pytest.raises(StorageError, match="RuntimeError: a bug"):
        await asyncio.wait_for(outbox.submit(msg("d", 1)), 10)
    with pytest.raises(OutboxFull, match="cannot write to disk"):
        outbox.submit(msg("d", 2))  # refused (no PUBACK) until a write succeeds again
    monkeypatch.setattr(outbox.log, "prepare", real)
    for _ in range(1000):  # the writer probes the disk by itself, with back-off
        if outbox.status()["refusing"] is None:
            break
        await asyncio.sleep(0.01)
    await asyncio.wait_for(outbox.submit(msg("d", 2)), 10)  # the writer is still there
    assert numbers(await outbox.peek(10)) == [2]


async def test_submit_before_open_or_after_close_is_refused(tmp_path: Path) -> None:
    box = make(tmp_path / "ob")
    with pytest.raises(StorageError, match="not open"):
        box.submit(msg("d", 1))
    await box.open()
    await box.close()
    with pytest.raises(StorageError, match="not open"):
        box.submit(msg("d", 1))


# -- restarts, torn tails, segments ------------------------------------------------------------------------


async def test_close_commits_what_is_queued_and_counts_survive_a_restart(tmp_path: Path) -> None:
    box = make(tmp_path / "ob", OutboxLimits())
    await box.open()
    for i in range(700):
        box.submit(msg(f"d{i % 2}", i))
    await box.close()  # nobody awaited the futures: close still commits them
    again = make(tmp_path / "ob", OutboxLimits())
    await again.open()
    try:
        assert again.depth() == {"messages": 700, "bytes": 7000, "devices": 2}
        assert sorted(numbers(await again.peek(1000))) == list(range(700))
    finally:
        await again.close()


async def test_a_torn_tail_is_cut_and_everything_before_it_kept(tmp_path: Path) -> None:
    box = make(tmp_path / "ob")
    await box.open()
    for i in range(3):
        await box.submit(msg("d", i))
    await box.close()
    (segment,) = sorted((tmp_path / "ob").glob("*.seg"))
    with segment.open("ab") as f:
        f.write(b"\x40\x00\x00\x00torn")  # a crash in the middle of the next append
    again = make(tmp_path / "ob")
    await again.open()
    try:
        assert numbers(await again.peek(10)) == [0, 1, 2]
        await again.submit(msg("d", 3))
        assert numbers(await again.peek(10)) == [0, 1, 2, 3]
    finally:
        await again.close()


async def test_delivered_segments_are_deleted_and_removals_survive_a_restart(tmp_path: Path) -> None:
    box = make(tmp_path / "ob", OutboxLimits())
    await box.open()
    box.log.segment_bytes = 4096
    for i in range(100):
        await box.submit(msg("d", i, size=200))
    assert len(box.log.segments) > 3
    rows = await box.peek(1000)
    await box.remove(rows[:90])
    assert len(box.log.segments) <= 2  # whole segments went: how a full disk gets space back
    await box.close()
    again = make(tmp_path / "ob", OutboxLimits())
    await again.open()
    try:
        assert numbers(await again.peek(1000)) == list(range(90, 100))
        await again.submit(msg("d", 100))
        assert numbers(await again.peek(1000))[-1] == 100
    finally:
        await again.close()


# -- dead letters and the schema ------------------------------------------------------------------------------


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'edgegate.db'}"
    upgrade(url)
    engine = open_engine(url)
    yield engine
    engine.dispose()


async def test_dead_letters_leave_the_outbox_and_come_back_when_requeued(tmp_path: Path, engine: Engine) -> None:
    letters = DeadLetters(engine)
    box = make(tmp_path / "ob", dead_letters=letters)
    await box.open()
    try:
        for i in range(3):
            await box.submit(msg("d", i))
        rows = await box.peek(10)
        await box.dead_letter(rows[1:2], 400, "bad_payload", "the payload is not JSON")
        assert numbers(await box.peek(10)) == [0, 2]
        (dead,) = letters.entries()
        assert (dead.message_id, dead.status, dead.reason, dead.detail) == (
            rows[1].message_id, 400, "bad_payload", "the payload is not JSON")
        assert box.status()["dead_letters"] == 1
        assert letters.flag_requeue(None) == 1
        assert await box.refresh_dead_letters() == 1
        again = await box.peek(10)
        assert numbers(again) == [0, 2, 1]
        assert again[-1].message_id == rows[1].message_id  # the hub can still deduplicate it
        assert letters.entries() == []
        assert box.status()["dead_letters"] == 0
    finally:
        await box.close()


async def test_an_older_releases_outbox_table_is_carried_over(tmp_path: Path, engine: Engine) -> None:
    from gateway.outbox.tables import outbox as legacy

    with engine.begin() as conn:
        conn.execute(legacy.insert(), [
            {"message_id": f"old{i}", "device_id": "d", "kind": "telemetry", "topic": "devices/d/messages/events/",
             "properties": "{}", "payload": str(i).encode(), "qos": 1, "enqueued_at": T0, "expires_at": T0 + 1}
            for i in range(3)])
    box = make(tmp_path / "ob", legacy=engine)
    await box.open()
    try:
        rows = await box.peek(10)
        assert [(int(r.payload), r.message_id) for r in rows] == [(0, "old0"), (1, "old1"), (2, "old2")]
        with engine.connect() as conn:
            assert conn.execute(legacy.select()).all() == []
    finally:
        await box.close()


def test_migration_matches_the_table_definition(engine: Engine) -> None:
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}),
                                 load_table_modules())
    assert [d for d in diffs if "outbox" in repr(d)] == []


def test_outbox_table_module_is_loaded_for_migrations() -> None:
    assert {"outbox", "outbox_dead_letters"} <= set(load_table_modules().tables)


# -- supervised tasks ----------------------------------------------------------------------------------


async def test_a_writer_that_dies_fails_its_commit_and_is_restarted(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug escaping the writer (here: reaping segments raises once) must neither leave that commit's
    devices waiting for ever nor stop every later commit: the supervisor restarts the writer."""
    import gateway.service.supervisor as supervisor_module

    monkeypatch.setattr(supervisor_module, "RETRY_BASE", 0.01)
    box = make(tmp_path / "ob", OutboxLimits())
    await box.open()
    try:
        real_reap, calls = box._reap, []

        async def reap_once_broken() -> None:
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("injected bug")
            await real_reap()

        monkeypatch.setattr(box, "_reap", reap_once_broken)
        with pytest.raises(StorageError, match="writer failed"):
            await asyncio.wait_for(box.submit(msg("d", 1)), 30)
        health = box.supervisor.health[store.WRITER_TASK]
        assert health.failures == 1
        assert health.last_error == "RuntimeError: injected bug"
        assert box.counters.get("edgegate_task_failures_total", task=store.WRITER_TASK) == 1
        await asyncio.wait_for(box.submit(msg("d", 2)), 30)  # committed by the restarted writer
        assert 2 in numbers(await box.peek(10))
        assert health.state is TaskState.RUNNING
    finally:
        await box.close()
    assert box.supervisor.health[store.WRITER_TASK].state is TaskState.STOPPED
    assert box.supervisor.health[store.SWEEP_TASK].state is TaskState.STOPPED


async def test_close_does_not_wait_out_a_failing_writers_back_off(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import gateway.service.supervisor as supervisor_module

    monkeypatch.setattr(supervisor_module, "RETRY_BASE", 600.0)  # the retry would come in minutes
    box = make(tmp_path / "ob", OutboxLimits())
    await box.open()

    async def broken() -> None:
        raise RuntimeError("injected bug")

    monkeypatch.setattr(box, "_reap", broken)
    with pytest.raises(StorageError):
        await asyncio.wait_for(box.submit(msg("d", 1)), 30)
    assert box.supervisor.health[store.WRITER_TASK].state is TaskState.FAILING
    waiting = box.submit(msg("d", 2))  # queued while the writer backs off
    await asyncio.wait_for(box.close(), 60)  # not the 600 s back-off
    with pytest.raises(StorageError, match="writer was failing"):
        await waiting


@pytest.mark.parametrize(
    ("seqs", "cleared"),
    [
        ([1, 2, 3], [1, 2, 3]),  # one run
        ([3, 1, 2], [3, 1, 2]),  # out of order: two runs
        ([2, 2, 4], [2, 4]),  # a duplicate counts once
        ([5, 6, 7, 8, 9], [5, 6, 7, 8, 9]),  # a run across the two segments
        ([10, 11, 40], [10]),  # seqs that were never stored are skipped
    ],
)
async def test_clearing_seqs_by_runs_counts_each_live_message_once(tmp_path: Path, seqs: list[int],
                                                                  cleared: list[int]) -> None:
    box = make(tmp_path / "ob", OutboxLimits())
    await box.open()
    try:
        await asyncio.gather(*(box.submit(msg("a" if n % 2 else "b", n, size=10 + n)) for n in range(1, 7)))
        box.log.segment_bytes = 1  # the next commit starts a second segment
        await asyncio.gather(*(box.submit(msg("a" if n % 2 else "b", n, size=10 + n)) for n in range(7, 11)))
        assert len(box.log.segments) == 2
        before = sum(s.live_count for s in box.log.segments)
        gone = box.log.clear(seqs)
        expected = [("a" if n % 2 else "b", 10 + n) for n in cleared]
        assert sorted(gone) == sorted(expected)
        assert sum(s.live_count for s in box.log.segments) == before - len(cleared)
    finally:
        await box.close()

"""The outbox on a real database (SQLite file; PostgreSQL too when EDGEGATE_TEST_PG_URL is set): group
commit, bounds, time-to-live with an injected clock, failed commits, restart counts, the migration."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, text

from gateway.errors import OutboxFull, StorageError
from gateway.outbox import store
from gateway.outbox.bounds import Bound, OutboxLimits, refusal
from gateway.outbox.store import Outbox
from gateway.records import InboundMessage
from gateway.store.db import open_engine, upgrade
from gateway.store.models import load_table_modules
from tests.unit.test_cache_repository import database_url  # noqa: F401 - the SQLite/PostgreSQL fixture

T0 = 1_800_000_000.0
SMALL = OutboxLimits(time_to_live=100, max_messages=50, max_bytes=10_000, per_device_max_messages=20)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def msg(device: str, n: int, *, at: float = T0, size: int = 10, qos: int = 1) -> InboundMessage:
    return InboundMessage(device, "telemetry", f"devices/{device}/messages/events/", str(n).encode().ljust(size),
                          qos, (("n", str(n)),), at)


def numbers(rows: list[store.QueuedMessage]) -> list[int]:
    return [int(r.payload) for r in rows]


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:  # noqa: F811 - the fixture imported above
    upgrade(database_url)
    engine = open_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def outbox(engine: Engine, clock: Clock) -> AsyncIterator[Outbox]:
    box = Outbox(engine, SMALL, clock=clock)
    await box.open()
    yield box
    await box.close()


def rename_table(engine: Engine, old: str, new: str) -> None:
    """A real storage fault: the outbox table disappears (or comes back) under the outbox."""
    with engine.begin() as conn:
        conn.execute(text(f"ALTER TABLE {old} RENAME TO {new}"))


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


# -- group commit ----------------------------------------------------------------------------------------


async def test_a_burst_is_committed_in_batches_of_at_most_512(engine: Engine) -> None:
    box = Outbox(engine, OutboxLimits())
    await box.open()
    try:
        futures = [box.submit(msg(f"d{i % 3}", i)) for i in range(2000)]  # queued before the writer runs
        await asyncio.gather(*futures)
        assert box._committer.commits == 4  # 512 + 512 + 512 + 464: one transaction (one fsync) each
        assert box._committer.largest_batch == 512
        assert box.counters.get("edgegate_outbox_committed_total") == 2000
        assert numbers(await box.peek(5000)) == list(range(2000))
    finally:
        await box.close()


async def test_a_lone_message_is_committed_at_once(outbox: Outbox) -> None:
    await asyncio.wait_for(outbox.submit(msg("d", 1)), 2)
    assert outbox._committer.commits == 1
    assert outbox._committer.largest_batch == 1


async def test_rows_read_back_in_arrival_order_with_unique_ids(outbox: Outbox) -> None:
    await asyncio.gather(*(outbox.submit(msg(f"d{i % 3}", i)) for i in range(30)))
    rows = await outbox.peek(100)
    assert numbers(rows) == list(range(30))
    assert [r.seq for r in rows] == sorted(r.seq for r in rows)
    assert rows[0].properties == {"n": "0"}
    assert rows[0].topic == "devices/d0/messages/events/"
    assert rows[0].kind == "telemetry"
    assert rows[0].qos == 1
    assert rows[0].enqueued_at == T0
    assert len({r.message_id for r in rows}) == 30
    assert numbers(await outbox.peek(5, after=rows[9].seq)) == [10, 11, 12, 13, 14]
    assert await outbox.remove(rows[:10]) == 10
    assert outbox.depth() == {"messages": 20, "bytes": 200, "devices": 3}
    assert numbers(await outbox.peek(5)) == [10, 11, 12, 13, 14]


@pytest.mark.parametrize(
    ("max_bytes", "expected"),
    [(None, [0, 1, 2, 3]), (10_000, [0, 1, 2, 3]), (250, [0, 1]), (299, [0, 1]), (300, [0, 1, 2]), (5, [0])],
)
async def test_peek_keeps_to_a_byte_budget_but_always_returns_one(outbox: Outbox, max_bytes: int | None,
                                                                  expected: list[int]) -> None:
    await asyncio.gather(*(outbox.submit(msg("d", i, size=100)) for i in range(4)))
    assert numbers(await outbox.peek(10, max_bytes=max_bytes)) == expected


async def test_qos0_is_stored_the_same_way_without_a_waiter(outbox: Outbox) -> None:
    outbox.submit(msg("d", 1, qos=0))
    await asyncio.wait_for(outbox.submit(msg("d", 2)), 2)  # commits are in order: the QoS 0 one is in
    assert [(r.qos, int(r.payload)) for r in await outbox.peek(10)] == [(0, 1), (1, 2)]


async def test_sqlite_commits_with_synchronous_full(engine: Engine, outbox: Outbox) -> None:
    if engine.dialect.name != "sqlite":
        pytest.skip("a SQLite pragma")
    with outbox.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


# -- bounds in the outbox -------------------------------------------------------------------------------


async def test_full_outbox_refuses_new_keeps_old_and_counts_each_bound(outbox: Outbox) -> None:
    for i in range(20):
        outbox.submit(msg("chatty", i))
    with pytest.raises(OutboxFull, match="per_device_max_messages"):
        outbox.submit(msg("chatty", 99))
    await asyncio.gather(*(outbox.submit(msg(f"quiet{i}", i)) for i in range(30)))  # others are not starved
    with pytest.raises(OutboxFull, match="max_messages 50"):
        outbox.submit(msg("another", 1))
    assert outbox.counters.get("edgegate_outbox_full_total", bound="per_device_max_messages") == 1
    assert outbox.counters.get("edgegate_outbox_full_total", bound="max_messages") == 1
    rows = await outbox.peek(100)
    assert len(rows) == 50
    assert numbers(rows)[:20] == list(range(20))
    await outbox.remove(rows[:1])
    await outbox.submit(msg("chatty", 100))  # room again once the hub took one


async def test_byte_bound(engine: Engine) -> None:
    box = Outbox(engine, OutboxLimits(max_bytes=1000))
    await box.open()
    try:
        await box.submit(msg("d", 1, size=600))
        with pytest.raises(OutboxFull, match="max_bytes"):
            box.submit(msg("d", 2, size=401))
        await box.submit(msg("d", 3, size=400))
        assert box.depth()["bytes"] == 1000
        assert box.counters.get("edgegate_outbox_full_total", bound="max_bytes") == 1
    finally:
        await box.close()


# -- time-to-live ---------------------------------------------------------------------------------------


async def test_expired_messages_are_skipped_deleted_and_counted(outbox: Outbox, clock: Clock) -> None:
    await outbox.submit(msg("d", 1, at=clock.now))
    await outbox.submit(msg("e", 2, at=clock.now + 50))
    clock.now += 100  # message 1 is exactly at its time-to-live
    assert numbers(await outbox.peek(10)) == [2]
    assert await outbox.expire() == 1
    assert outbox.counters.get("edgegate_outbox_expired_total") == 1
    assert outbox.depth() == {"messages": 1, "bytes": 10, "devices": 1}
    clock.now += 1000
    assert await outbox.expire() == 1
    assert outbox.depth() == {"messages": 0, "bytes": 0, "devices": 0}


async def test_a_large_expiry_runs_in_chunks(outbox: Outbox, clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store, "EXPIRE_CHUNK", 3)
    await asyncio.gather(*(outbox.submit(msg(f"d{i % 2}", i)) for i in range(10)))
    clock.now += 1000
    assert await outbox.expire() == 10
    assert outbox.depth()["messages"] == 0


async def test_removing_messages_that_expired_meanwhile_does_not_count_them_twice(outbox: Outbox,
                                                                                   clock: Clock) -> None:
    await asyncio.gather(*(outbox.submit(msg("d", i)) for i in range(4)))
    await outbox.submit(msg("d", 9, at=T0 + 500))
    in_flight = await outbox.peek(4)  # read by the forwarder, then the sweep runs before the hub answers
    clock.now += 200
    assert await outbox.expire() == 4
    assert await outbox.remove(in_flight) == 0
    assert outbox.depth() == {"messages": 1, "bytes": 10, "devices": 1}


async def test_the_sweep_runs_by_itself(engine: Engine, clock: Clock) -> None:
    box = Outbox(engine, SMALL, clock=clock, expire_every=0.01)
    await box.open()
    try:
        await box.submit(msg("d", 1))
        clock.now += 1000
        for _ in range(200):
            if box.depth()["messages"] == 0:
                break
            await asyncio.sleep(0.01)
        assert box.counters.get("edgegate_outbox_expired_total") == 1
    finally:
        await box.close()


# -- failures -------------------------------------------------------------------------------------------


async def test_failed_commit_fails_the_futures_and_the_writer_carries_on(engine: Engine, outbox: Outbox) -> None:
    rename_table(engine, "outbox", "outbox_away")
    try:
        futures = [outbox.submit(msg("d", i)) for i in range(3)]
        for future in futures:
            with pytest.raises(StorageError, match="committing to the outbox"):
                await future
        assert outbox.depth() == {"messages": 0, "bytes": 0, "devices": 0}
        assert outbox.counters.get("edgegate_outbox_commit_failed_total") == 3
    finally:
        rename_table(engine, "outbox_away", "outbox")
    await asyncio.wait_for(outbox.submit(msg("d", 7)), 5)
    assert numbers(await outbox.peek(10)) == [7]


async def test_failed_qos0_commit_leaves_no_unretrieved_exception(engine: Engine, outbox: Outbox) -> None:
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    rename_table(engine, "outbox", "outbox_away")
    try:
        outbox.submit(msg("d", 1, qos=0))
        for _ in range(200):
            if outbox.counters.get("edgegate_outbox_commit_failed_total"):
                break
            await asyncio.sleep(0.01)
        assert outbox.counters.get("edgegate_outbox_commit_failed_total") == 1
    finally:
        rename_table(engine, "outbox_away", "outbox")
    gc.collect()
    await asyncio.sleep(0)
    assert reported == []


async def test_submit_before_open_or_after_close_is_refused(engine: Engine) -> None:
    box = Outbox(engine, SMALL)
    with pytest.raises(StorageError, match="not open"):
        box.submit(msg("d", 1))
    await box.open()
    await box.close()
    with pytest.raises(StorageError, match="not open"):
        box.submit(msg("d", 1))
    assert box.depth()["messages"] == 0


# -- restarts and the schema ------------------------------------------------------------------------------


async def test_close_commits_what_is_queued_and_counts_survive_a_restart(engine: Engine) -> None:
    box = Outbox(engine, OutboxLimits())
    await box.open()
    for i in range(700):
        box.submit(msg(f"d{i % 2}", i))
    await box.close()  # nobody awaited the futures: close still commits them
    again = Outbox(engine, OutboxLimits())
    await again.open()
    try:
        assert again.depth() == {"messages": 700, "bytes": 7000, "devices": 2}
        assert numbers(await again.peek(1000)) == list(range(700))
    finally:
        await again.close()


async def test_seq_is_never_reused_after_the_outbox_empties(outbox: Outbox) -> None:
    await asyncio.gather(*(outbox.submit(msg("d", i)) for i in range(3)))
    first = await outbox.peek(10)
    await outbox.remove(first)
    await outbox.submit(msg("d", 3))
    (again,) = await outbox.peek(10)
    assert again.seq > first[-1].seq


def test_migration_matches_the_table_definition(engine: Engine) -> None:
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}),
                                 load_table_modules())
    assert [d for d in diffs if "outbox" in repr(d)] == []


def test_outbox_table_module_is_loaded_for_migrations() -> None:
    assert "outbox" in load_table_modules().tables

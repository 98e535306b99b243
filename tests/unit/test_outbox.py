"""The outbox on a real SQLite file: group commit, bounds, time-to-live, failed commits, restart counts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from gateway.errors import OutboxFull, StorageError
from gateway.outbox.bounds import OutboxLimits, refusal
from gateway.outbox.store import Outbox
from gateway.records import InboundMessage
from gateway.store.db import open_engine, upgrade


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def msg(device: str, n: int, at: float = 1_800_000_000.0, size: int = 10) -> InboundMessage:
    return InboundMessage(device, "telemetry", f"devices/{device}/messages/events/", str(n).encode().ljust(size),
                          1, (("n", str(n)),), at)


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    url = f"sqlite:///{tmp_path / 'gw.db'}"
    upgrade(url)
    return open_engine(url)


@pytest.fixture
async def outbox(engine: Engine) -> AsyncIterator[Outbox]:
    box = Outbox(engine, OutboxLimits(time_to_live=100, max_messages=50, max_bytes=10_000, per_device_max_messages=20),
                 clock=Clock())
    await box.open()
    yield box
    await box.close()


@pytest.mark.parametrize(
    ("messages", "size", "device", "payload", "expected"),
    [
        (0, 0, 0, 10, None),
        (49, 0, 0, 10, None),
        (50, 0, 0, 10, "max_messages"),
        (0, 9_995, 0, 10, "max_bytes"),
        (0, 0, 20, 10, "per_device_max_messages"),
    ],
)
def test_refusal_table(messages: int, size: int, device: int, payload: int, expected: str | None) -> None:
    limits = OutboxLimits(max_messages=50, max_bytes=10_000, per_device_max_messages=20)
    why = refusal(limits, messages, size, device, payload)
    assert (why is None) if expected is None else (expected in str(why))


async def test_group_commit_resolves_in_order_and_reads_back_fifo(outbox: Outbox) -> None:
    futures = [outbox.submit(msg(f"d{i % 3}", i)) for i in range(30)]
    await asyncio.gather(*futures)
    assert outbox.counters.get("edgegate_outbox_committed_total") == 30
    rows = await outbox.peek(100)
    assert [int(r.payload) for r in rows] == list(range(30))
    assert rows[0].properties == {"n": "0"}
    assert len({r.message_id for r in rows}) == 30
    await outbox.remove(rows[:10])
    assert outbox.depth()["messages"] == 20
    assert [int(r.payload) for r in await outbox.peek(5)] == [10, 11, 12, 13, 14]


async def test_full_outbox_refuses_new_and_keeps_old(outbox: Outbox) -> None:
    for i in range(20):
        outbox.submit(msg("chatty", i))
    with pytest.raises(OutboxFull, match="per_device_max_messages"):
        outbox.submit(msg("chatty", 99))
    outbox.submit(msg("quiet", 1))  # other devices are not starved by one chatty one
    await asyncio.sleep(0.2)
    assert outbox.depth()["messages"] == 21


async def test_expired_messages_are_counted_and_skipped(engine: Engine) -> None:
    clock = Clock()
    box = Outbox(engine, OutboxLimits(time_to_live=100), clock=clock)
    await box.open()
    await box.submit(msg("d", 1, at=clock.now))
    await box.submit(msg("d", 2, at=clock.now + 50))
    clock.now += 120
    assert [int(r.payload) for r in await box.peek(10)] == [2]
    assert await box.expire() == 1
    assert box.counters.get("edgegate_outbox_expired_total") == 1
    assert box.depth()["messages"] == 1
    await box.close()


async def test_failed_commit_fails_the_future(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'never-migrated.db'}"  # no outbox table: every commit fails
    box = Outbox(open_engine(url), OutboxLimits())
    box._load_counts = lambda: (0, 0, __import__("collections").Counter())  # type: ignore[method-assign]
    await box.open()
    fut = box.submit(msg("d", 1))
    with pytest.raises(StorageError):
        await fut
    assert box.depth()["messages"] == 0
    await box.close()


async def test_counts_survive_a_restart(engine: Engine) -> None:
    box = Outbox(engine, OutboxLimits())
    await box.open()
    await asyncio.gather(*(box.submit(msg(f"d{i % 2}", i)) for i in range(7)))
    await box.close()
    again = Outbox(engine, OutboxLimits())
    await again.open()
    assert again.depth() == {"messages": 7, "bytes": 70, "devices": 2}
    await again.close()

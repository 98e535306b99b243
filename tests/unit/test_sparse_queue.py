"""SparseQueue behaves as asyncio.Queue does; it only allocates later."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.session import Session

from gateway.broker import sparse_queue
from gateway.broker.sparse_queue import SparseQueue

Scenario = Callable[[asyncio.Queue], Awaitable[list[object]]]  # type: ignore[type-arg]


async def fifo(q: asyncio.Queue) -> list[object]:  # type: ignore[type-arg]
    seen: list[object] = [q.empty(), q.qsize(), q.full()]
    for i in range(3):
        await q.put(i)
    seen += [q.empty(), q.qsize(), q.full()]
    seen += [await q.get(), q.get_nowait(), await q.get()]
    return [*seen, q.empty()]


async def getter_waits_for_put(q: asyncio.Queue) -> list[object]:  # type: ignore[type-arg]
    getter = asyncio.ensure_future(q.get())
    await asyncio.sleep(0)
    seen: list[object] = [getter.done()]
    q.put_nowait("x")
    return [*seen, await getter]


async def bounded_put_waits(q: asyncio.Queue) -> list[object]:  # type: ignore[type-arg]
    q.put_nowait(1)
    q.put_nowait(2)
    seen: list[object] = [q.full()]
    try:
        q.put_nowait(3)
    except asyncio.QueueFull:
        seen.append("full")
    putter = asyncio.ensure_future(q.put(3))
    await asyncio.sleep(0)
    seen += [putter.done(), q.get_nowait()]
    await putter
    return [*seen, q.get_nowait(), q.get_nowait()]


async def empty_get_nowait_raises(q: asyncio.Queue) -> list[object]:  # type: ignore[type-arg]
    try:
        q.get_nowait()
    except asyncio.QueueEmpty:
        return ["empty"]
    return ["item"]


async def join_waits_for_task_done(q: asyncio.Queue) -> list[object]:  # type: ignore[type-arg]
    await asyncio.wait_for(q.join(), 1)  # nothing put: returns at once
    q.put_nowait("job")
    joiner = asyncio.ensure_future(q.join())
    await asyncio.sleep(0)
    seen: list[object] = [joiner.done(), q.get_nowait()]
    q.task_done()
    await asyncio.wait_for(joiner, 1)
    return [*seen, joiner.done()]


async def cancelled_getter_then_put(q: asyncio.Queue) -> list[object]:  # type: ignore[type-arg]
    getter = asyncio.ensure_future(q.get())
    await asyncio.sleep(0)
    getter.cancel()
    await asyncio.gather(getter, return_exceptions=True)
    q.put_nowait("kept")
    return [q.qsize(), await q.get()]


SCENARIOS: list[tuple[Scenario, int]] = [
    (fifo, 0), (getter_waits_for_put, 0), (bounded_put_waits, 2), (empty_get_nowait_raises, 0),
    (join_waits_for_task_done, 0), (cancelled_getter_then_put, 0),
]


@pytest.mark.parametrize(("scenario", "maxsize"), SCENARIOS, ids=[s.__name__ for s, _ in SCENARIOS])
def test_same_behaviour_as_asyncio_queue(scenario: Scenario, maxsize: int) -> None:
    expected = asyncio.run(scenario(asyncio.Queue(maxsize)))
    assert asyncio.run(scenario(SparseQueue(maxsize))) == expected


def test_nothing_is_allocated_until_used() -> None:
    q = SparseQueue()
    assert q.empty()
    assert q.qsize() == 0
    assert not q.full()
    assert not set(vars(q)) & {"_queue", "_getters", "_putters", "_finished"}
    q.put_nowait(1)
    assert "_queue" in vars(q)


def test_an_emptied_queue_lets_its_deque_go_and_waiters_wait_in_a_list() -> None:
    async def scenario() -> tuple[bool, type, bool]:
        q = SparseQueue()
        q.put_nowait("subscribe")
        q.get_nowait()
        kept = "_queue" in vars(q)
        getter = asyncio.ensure_future(q.get())  # what an idle device's session does
        await asyncio.sleep(0)
        waiters = type(q._getters)
        q.put_nowait("c2d")
        await getter
        return kept, waiters, "_queue" in vars(q)

    kept, waiters, still = asyncio.run(scenario())
    assert not kept
    assert issubclass(waiters, list)
    assert not still


def test_a_queue_that_was_used_keeps_no_deque_in_its_unfinished_event() -> None:
    # The first put builds the join() event; amqtt never joins, so a deque there (0.6 KiB) would stay
    # with every device that ever sent a SUBSCRIBE.
    q = SparseQueue()
    q.put_nowait("subscribe")
    q.get_nowait()
    assert isinstance(q._finished._waiters, list)


def test_on_put_is_called_after_each_item_is_in_the_queue() -> None:
    q = SparseQueue()
    sizes: list[int] = []
    q.put_nowait("no hook yet")
    q.on_put = lambda: sizes.append(q.qsize())
    q.put_nowait("a")
    q.put_nowait("b")
    assert sizes == [2, 3]
    assert SparseQueue.on_put is None  # a hook is per queue, not per class


def test_amqtt_builds_its_per_device_queues_sparse() -> None:
    sparse_queue.install()

    async def build() -> BrokerProtocolHandler:
        return BrokerProtocolHandler(None)  # type: ignore[arg-type]  # no plugin is fired here

    session = Session()
    handler = asyncio.run(build())
    queues = [session.retained_messages, session.delivered_message_queue,
              handler._pending_subscriptions, handler._pending_unsubscriptions]
    assert all(isinstance(q, SparseQueue) for q in queues)


async def event_scenario(make: Callable[[], asyncio.Event]) -> list[object]:
    event = make()
    seen: list[object] = [event.is_set()]
    waiters = [asyncio.ensure_future(event.wait()) for _ in range(3)]
    cancelled = asyncio.ensure_future(event.wait())
    await asyncio.sleep(0)
    cancelled.cancel()
    await asyncio.gather(cancelled, return_exceptions=True)
    seen.append([w.done() for w in waiters])
    event.set()
    seen.append(await asyncio.gather(*waiters))
    event.clear()
    seen.append(event.is_set())
    late = asyncio.ensure_future(event.wait())
    await asyncio.sleep(0)
    seen.append(late.done())
    event.set()
    seen.append(await late)
    return seen


def test_sparse_event_behaves_as_asyncio_event() -> None:
    assert asyncio.run(event_scenario(sparse_queue.SparseEvent)) == asyncio.run(event_scenario(asyncio.Event))


def test_amqtt_handler_builds_sparse_events() -> None:
    sparse_queue.install()
    sparse_queue.install()  # idempotent

    async def build() -> BrokerProtocolHandler:
        return BrokerProtocolHandler(None)  # type: ignore[arg-type]

    handler = asyncio.run(build())
    assert isinstance(handler._reader_stopped, sparse_queue.SparseEvent)
    assert isinstance(handler._reader_stopped._waiters, list)  # type: ignore[attr-defined]

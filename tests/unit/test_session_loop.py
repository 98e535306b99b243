"""The per-session loop that replaces amqtt's four waiter tasks: it handles what each queue holds in the
device's order, loses nothing put while it is busy, ends on the disconnect, and leaves a takeover's hooks
alone. Driven with a broker that records what it is handed (test_broker_port.py drives it through amqtt)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.broker.session_loop import serve_session
from gateway.broker.sparse_queue import SparseQueue


class Handler:
    """The three things the loop reads off amqtt's broker protocol handler."""

    def __init__(self, disconnect: bool = True) -> None:
        self._pending_subscriptions = SparseQueue()
        self._pending_unsubscriptions = SparseQueue()
        self._disconnect_waiter: asyncio.Future[Any] | None = (
            asyncio.get_running_loop().create_future() if disconnect else None)


class Session:
    def __init__(self) -> None:
        self.delivered_message_queue = SparseQueue()


class Recorder:
    """A broker that writes down each event it is handed; `during` runs inside one handling, as a device
    that sends more while the broker is busy."""

    def __init__(self, deliver_ok: bool = True) -> None:
        self.events: list[tuple[str, Any]] = []
        self.deliver_ok = deliver_ok
        self.during: dict[Any, Any] = {}

    async def _record(self, kind: str, waiter: Any) -> None:
        value = waiter.result()
        self.events.append((kind, value))
        await asyncio.sleep(0)  # amqtt's handlers await writes: let others run in between
        if value in self.during:
            self.during.pop(value)()

    async def _handle_subscription(self, session: Any, handler: Any, waiter: Any) -> None:
        await self._record("subscribe", waiter)

    async def _handle_unsubscription(self, session: Any, handler: Any, waiter: Any) -> None:
        await self._record("unsubscribe", waiter)

    async def _handle_message_delivery(self, session: Any, handler: Any, waiter: Any) -> bool:
        await self._record("message", waiter)
        return self.deliver_ok

    async def _handle_disconnect(self, session: Any, handler: Any, waiter: Any) -> None:
        await self._record("disconnect", waiter)


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


@pytest.mark.asyncio
async def test_what_is_queued_is_handled_in_order_and_the_disconnect_ends_it() -> None:
    broker, session, handler = Recorder(), Session(), Handler()
    handler._pending_subscriptions.put_nowait("sub-1")
    handler._pending_subscriptions.put_nowait("sub-2")
    handler._pending_unsubscriptions.put_nowait("unsub-1")
    session.delivered_message_queue.put_nowait("msg-1")
    loop_task = asyncio.create_task(serve_session(broker, session, handler))  # type: ignore[arg-type]
    await settle()
    assert broker.events == [("subscribe", "sub-1"), ("subscribe", "sub-2"), ("unsubscribe", "unsub-1"),
                             ("message", "msg-1")]
    assert not loop_task.done()  # idle, waiting
    handler._pending_subscriptions.put_nowait("sub-3")
    await settle()
    assert broker.events[-1] == ("subscribe", "sub-3")
    assert handler._disconnect_waiter is not None
    handler._disconnect_waiter.set_result("DISCONNECT")
    await asyncio.wait_for(loop_task, 5)
    assert broker.events[-1] == ("disconnect", "DISCONNECT")
    # Its hooks are gone with it.
    for queue in (handler._pending_subscriptions, handler._pending_unsubscriptions, session.delivered_message_queue):
        assert queue.on_put is None


@pytest.mark.asyncio
async def test_what_arrives_while_the_loop_is_busy_is_not_lost() -> None:
    broker, session, handler = Recorder(), Session(), Handler()
    # While the first SUBSCRIBE is being handled, the device sends an UNSUBSCRIBE, a message and another
    # SUBSCRIBE: the loop has already looked at those queues this round.
    broker.during["sub-1"] = lambda: (handler._pending_unsubscriptions.put_nowait("unsub-1"),
                                      session.delivered_message_queue.put_nowait("msg-1"),
                                      handler._pending_subscriptions.put_nowait("sub-2"))
    broker.during["msg-1"] = lambda: session.delivered_message_queue.put_nowait("msg-2")
    loop_task = asyncio.create_task(serve_session(broker, session, handler))  # type: ignore[arg-type]
    handler._pending_subscriptions.put_nowait("sub-1")
    await settle()
    assert [value for _, value in broker.events] == ["sub-1", "sub-2", "unsub-1", "msg-1", "msg-2"]
    loop_task.cancel()
    await loop_task


@pytest.mark.asyncio
async def test_a_subscribe_sent_with_the_disconnect_is_answered_first() -> None:
    # amqtt's own loop handles the disconnect before a SUBSCRIBE that finished in the same round.
    broker, session, handler = Recorder(), Session(), Handler()
    loop_task = asyncio.create_task(serve_session(broker, session, handler))  # type: ignore[arg-type]
    await settle()
    handler._pending_subscriptions.put_nowait("sub-1")
    assert handler._disconnect_waiter is not None
    handler._disconnect_waiter.set_result(None)
    await asyncio.wait_for(loop_task, 5)
    assert broker.events == [("subscribe", "sub-1"), ("disconnect", None)]


@pytest.mark.asyncio
async def test_a_refused_message_ends_the_loop_without_a_disconnect() -> None:
    # amqtt closes a device that publishes to an invalid topic and does not handle a disconnect for it.
    broker, session, handler = Recorder(deliver_ok=False), Session(), Handler()
    session.delivered_message_queue.put_nowait("bad/#")
    session.delivered_message_queue.put_nowait("never")
    await asyncio.wait_for(serve_session(broker, session, handler), 5)  # type: ignore[arg-type]
    assert broker.events == [("message", "bad/#")]


@pytest.mark.asyncio
async def test_a_handler_without_a_disconnect_waiter_ends_at_once_with_none() -> None:
    broker, session, handler = Recorder(), Session(), Handler(disconnect=False)
    handler._pending_subscriptions.put_nowait("sub-1")
    await asyncio.wait_for(serve_session(broker, session, handler), 5)  # type: ignore[arg-type]
    assert broker.events == [("subscribe", "sub-1"), ("disconnect", None)]


@pytest.mark.asyncio
async def test_a_reader_that_stopped_before_the_disconnect_waiter_was_made_ends_it() -> None:
    # amqtt's handler starts its reader before it makes the disconnect future: a stream that ends at once
    # is read to its end, and reported to no future, before the future the loop waits on exists.
    broker, session, handler = Recorder(), Session(), Handler()

    async def read_to_eof() -> None:
        return None

    handler._reader_task = asyncio.create_task(read_to_eof())  # type: ignore[attr-defined]
    await handler._reader_task  # type: ignore[attr-defined]
    await asyncio.wait_for(serve_session(broker, session, handler), 5)  # type: ignore[arg-type]
    assert broker.events == [("disconnect", None)]
    assert handler._disconnect_waiter is not None
    assert not handler._disconnect_waiter.done()  # the orphan: nothing but the reader's end tells


@pytest.mark.asyncio
async def test_a_reader_that_stops_while_the_loop_waits_ends_it() -> None:
    broker, session, handler = Recorder(), Session(), Handler()
    stop = asyncio.Event()
    handler._reader_task = asyncio.create_task(stop.wait())  # type: ignore[attr-defined]
    loop_task = asyncio.create_task(serve_session(broker, session, handler))  # type: ignore[arg-type]
    await settle()
    assert not loop_task.done()  # a live reader: the loop waits
    stop.set()
    await asyncio.wait_for(loop_task, 5)
    assert broker.events == [("disconnect", None)]


@pytest.mark.asyncio
async def test_cancelling_it_ends_it_quietly_and_unhooks_it() -> None:
    broker, session, handler = Recorder(), Session(), Handler()
    loop_task = asyncio.create_task(serve_session(broker, session, handler))  # type: ignore[arg-type]
    await settle()
    loop_task.cancel()
    assert await loop_task is None  # no CancelledError: as amqtt's loop, it breaks out
    assert session.delivered_message_queue.on_put is None
    assert handler._disconnect_waiter is not None
    handler._disconnect_waiter.set_result(None)  # nothing is woken any more
    await settle()
    assert broker.events == []


@pytest.mark.asyncio
async def test_a_takeover_keeps_the_new_loops_hook_on_the_shared_queue() -> None:
    broker, session = Recorder(), Session()
    old, new = Handler(), Handler()
    old_task = asyncio.create_task(serve_session(broker, session, old))  # type: ignore[arg-type]
    await settle()
    new_task = asyncio.create_task(serve_session(broker, session, new))  # type: ignore[arg-type]
    await settle()
    assert old._disconnect_waiter is not None
    old._disconnect_waiter.set_result(None)
    await asyncio.wait_for(old_task, 5)
    session.delivered_message_queue.put_nowait("msg-after")
    await settle()
    assert broker.events[-1] == ("message", "msg-after")  # handled by the new loop
    new_task.cancel()
    await new_task


@pytest.mark.asyncio
async def test_an_idle_session_holds_no_task_but_its_own() -> None:
    before = len(asyncio.all_tasks())
    broker = Recorder()
    loops = [asyncio.create_task(serve_session(broker, Session(), Handler()))  # type: ignore[arg-type]
             for _ in range(50)]
    await settle()
    assert len(asyncio.all_tasks()) - before == 50
    for loop_task in loops:
        loop_task.cancel()
    await asyncio.gather(*loops)


@pytest.mark.asyncio
async def test_stock_asyncio_queues_are_refused_with_the_fix() -> None:
    handler = Handler()
    handler._pending_subscriptions = asyncio.Queue()  # type: ignore[assignment]
    with pytest.raises(TypeError, match=r"sparse_queue\.install"):
        await serve_session(Recorder(), Session(), handler)  # type: ignore[arg-type]

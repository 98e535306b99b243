"""One connected device's broker session, served on one future instead of amqtt's four tasks.

amqtt 0.12.1's `_client_message_loop` waits for every connected session on four tasks at once (the
disconnect, the next SUBSCRIBE, the next UNSUBSCRIBE, the next message the device published) with
`asyncio.wait`, and builds a fresh task for each one that finishes. An idle device holds those four tasks,
their coroutines, the queues' getter futures and the wait's callbacks for as long as it stays connected:
6.5 KiB of Python heap per connection (24.5 -> 18.0 KiB, `python -m bench.memprofile 300`).

Here the session's queues (SparseQueue) call `wake_up` when something is put, and the handler's
disconnect future calls it when it is done: the loop sleeps on one future and, each time it wakes,
handles what is there with amqtt's own handlers, so every reply and table change is amqtt's: the
SUBSCRIBEs, the UNSUBSCRIBEs, the messages, and the disconnect last (amqtt's loop ends a session before
answering a SUBSCRIBE that arrived with its DISCONNECT).

The loop also ends when the handler's reader has stopped. amqtt 0.12.1's handler starts its reader before
it makes the disconnect future: a device whose stream ends at once (a CONNECT and a malformed packet in
one read, or a device gone while it was being admitted) has its end-of-stream read, and reported to no
future, before the future exists; the future made next is never completed, and its session loop, with the
session's handler, waited for ever. The fuzz test left 61 of them behind (tests/hostile/test_fuzz.py), and
a gateway whose devices flap would have gathered them for months.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from gateway.broker.amqtt_surface import BrokerProtocolHandler, Session
from gateway.broker.sparse_queue import SparseQueue


class SessionBroker(Protocol):
    """The amqtt Broker methods the loop hands each event to."""

    async def _handle_subscription(self, session: Session, handler: BrokerProtocolHandler, waiter: Any) -> None: ...

    async def _handle_unsubscription(self, session: Session, handler: BrokerProtocolHandler,
                                     waiter: Any) -> None: ...

    async def _handle_message_delivery(self, session: Session, handler: BrokerProtocolHandler,
                                       waiter: Any) -> bool: ...

    async def _handle_disconnect(self, session: Session, handler: BrokerProtocolHandler, waiter: Any) -> None: ...


class _Ready:
    """What amqtt's handlers read a finished waiter through: its `result()`."""

    __slots__ = ("_value",)

    def __init__(self, value: Any) -> None:
        self._value = value

    def result(self) -> Any:
        return self._value


class _Gone:
    """A disconnect waiter for a handler that had none: amqtt's `wait_disconnect()` answers None at once."""

    @staticmethod
    def result() -> None:
        return None


def _sparse(queue: Any) -> SparseQueue:
    if not isinstance(queue, SparseQueue):
        raise TypeError("the session loop needs amqtt's queues as SparseQueue: call sparse_queue.install() first")
    return queue


async def serve_session(broker: SessionBroker, session: Session, handler: BrokerProtocolHandler) -> None:
    """amqtt's per-session message loop: returns when the device has gone (or sent what ends it)."""
    loop = asyncio.get_running_loop()
    subscriptions = _sparse(handler._pending_subscriptions)
    unsubscriptions = _sparse(handler._pending_unsubscriptions)
    published = _sparse(session.delivered_message_queue)
    disconnect: asyncio.Future[Any] | None = handler._disconnect_waiter
    reader: asyncio.Task[Any] | None = getattr(handler, "_reader_task", None)
    wake: asyncio.Future[None] = loop.create_future()

    def wake_up(*_: Any) -> None:
        if not wake.done():
            wake.set_result(None)

    queues = (subscriptions, unsubscriptions, published)
    for queue in queues:
        # A takeover's new connection shares the session (and its queue) and sets its own hook over ours.
        queue.on_put = wake_up
    if disconnect is not None:
        disconnect.add_done_callback(wake_up)
    if reader is not None:
        reader.add_done_callback(wake_up)
    try:
        while True:
            # A fresh future before looking: whatever is put from here on wakes the await below.
            wake = loop.create_future()
            while not subscriptions.empty():
                await broker._handle_subscription(session, handler, _Ready(subscriptions.get_nowait()))
            while not unsubscriptions.empty():
                await broker._handle_unsubscription(session, handler, _Ready(unsubscriptions.get_nowait()))
            while not published.empty():
                if not await broker._handle_message_delivery(session, handler, _Ready(published.get_nowait())):
                    return  # amqtt closes on an invalid topic without handling the disconnect
            if disconnect is None or disconnect.done():
                await broker._handle_disconnect(session, handler, disconnect or _Gone())
                return
            if reader is not None and reader.done():
                # The stream ended before the disconnect future was made: nothing will complete it.
                await broker._handle_disconnect(session, handler, _Gone())
                return
            await wake
    except asyncio.CancelledError:
        return  # as amqtt's loop does: a cancelled session loop ends quietly
    finally:
        for queue in queues:
            if queue.on_put is wake_up:
                queue.on_put = None
        if disconnect is not None:
            disconnect.remove_done_callback(wake_up)
        if reader is not None:
            reader.remove_done_callback(wake_up)

"""An asyncio.Queue that allocates its buffers on first use, for amqtt's per-device queues (and an
asyncio.Event and a deque stand-in for the same reason).

amqtt 0.12.1 builds four queues for every connected device: two in its `Session` (retained and
delivered messages) and two in its broker protocol handler (pending subscribe and unsubscribe). A
stock asyncio.Queue allocates three deques and an Event (with a fourth deque) up front, and most of
these queues never hold anything: 9.4 KiB of queues plus 3.6 KiB of their events per idle device
(tracemalloc, `python -m bench.memprofile 300`). A deque costs 0.6 KiB even when empty, so this queue
builds its item deque when something is first put and lets it go once it is empty again, and keeps its
waiting getters and putters in a list. Behaviour is asyncio.Queue's own: only the allocation differs,
and `tests/unit/test_sparse_queue.py` runs the same scenarios on both.
"""

from __future__ import annotations

import asyncio
import collections
import types
from collections.abc import Callable
from typing import Any

from gateway.broker.amqtt_surface import broker_handler_module, handler_module, session_module


class _Waiters(list):  # type: ignore[type-arg]
    """The getters or putters waiting on a queue: a list with deque's `popleft`. There are rarely more than
    one (an idle device's session waits with one getter), and an empty deque costs 0.6 KiB, a list 56 B."""

    __slots__ = ()

    def popleft(self) -> Any:
        return self.pop(0)


class SparseEvent(asyncio.Event):
    """asyncio.Event with its waiters in a list: amqtt's protocol handler holds three per device, and
    each stock Event keeps a deque (0.6 KiB) that nobody waits on while the device is idle."""

    def __init__(self) -> None:
        super().__init__()
        self._waiters = _Waiters()  # type: ignore[assignment]


def _namespace(module: types.ModuleType, **overrides: Any) -> types.ModuleType:
    """A copy of `module`'s namespace with some names replaced, for one amqtt module to see."""
    copy = types.ModuleType(module.__name__)
    copy.__dict__.update(vars(module))
    copy.__dict__.update(overrides)
    return copy


def _set_event() -> asyncio.Event:
    # Built by the first put (which clears it); only join() ever waits on it, and amqtt never joins.
    event = SparseEvent()
    event.set()  # no unfinished tasks yet, as asyncio.Queue.__init__ leaves it
    return event


# What asyncio.Queue.__init__ allocates, built on first access instead.
_DEFERRED: dict[str, Callable[[], Any]] = {
    "_queue": collections.deque,
    "_getters": _Waiters,
    "_putters": _Waiters,
    "_finished": _set_event,
}


class SparseQueue(asyncio.Queue):  # type: ignore[type-arg]
    """asyncio.Queue with its deques and its Event built when first needed."""

    # The scalar state asyncio.Queue.__init__ sets; class defaults cost nothing per instance.
    _unfinished_tasks = 0
    _is_shutdown = False  # Python 3.13+
    # Called after each item is put: how the session loop (session_loop.py) learns of work without a
    # getter task waiting on every queue.
    on_put: Callable[[], None] | None = None

    def __init__(self, maxsize: int = 0) -> None:  # deliberately no super().__init__(): it allocates
        self._maxsize = maxsize

    def __getattr__(self, name: str) -> Any:
        # Only called for attributes not set yet.
        factory = _DEFERRED.get(name)
        if factory is None:
            raise AttributeError(name)
        value = factory()
        setattr(self, name, value)
        return value

    def _put(self, item: Any) -> None:
        self._queue.append(item)
        if self.on_put is not None:
            self.on_put()

    def _get(self) -> Any:
        item = self._queue.popleft()
        if not self._queue:
            del self._queue  # built again by the next put: a queue that held one SUBSCRIBE keeps no deque
        return item

    def qsize(self) -> int:
        queue = self.__dict__.get("_queue")
        return len(queue) if queue else 0

    def empty(self) -> bool:
        return not self.__dict__.get("_queue")


def install() -> None:
    """Make amqtt build its per-device queues as SparseQueue, and its protocol handler's events and
    in-flight task list the sparse way. Idempotent."""
    session_module.Queue = SparseQueue
    broker_handler_module.Queue = SparseQueue
    if handler_module.asyncio.Event is not SparseEvent:
        handler_module.asyncio = _namespace(asyncio, Event=SparseEvent)
        handler_module.collections = _namespace(collections, deque=_Waiters)

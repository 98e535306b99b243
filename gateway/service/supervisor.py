"""Supervised background tasks: a failure is logged once with its cause, counted, retried with back-off,
and visible in status.json and /healthz. No background task dies silently.

Three shapes: `loop(name, factory)` for a task that runs forever on its own (forwarder, cloud-to-device,
the broker's broadcast loop): if it ever raises or returns, it is started again after a back-off;
`every(name, interval, step)` for periodic work (the status writer): each step that raises is a failure,
the next success a recovery; `owned(name, factory, finished)` for a task whose owner ends it (the outbox
writer, which drains its queue on close; the registry sync, restarted after a new identity): restarted
like a loop, but `stop()` leaves it to its owner, and returning once `finished()` is true is its end.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from gateway.hub.backoff import next_backoff
from gateway.metrics import Counters

log = logging.getLogger("edgegate.supervisor")

RETRY_BASE = 1.0
RETRY_CAP = 60.0  # one minute: a stuck dependency (full disk, no descriptors) is retried, not hammered
STABLE_AFTER = 60.0  # a restarted task that runs this long without failing has recovered


class TaskState(enum.Enum):
    RUNNING = "running"
    FAILING = "failing"  # failed; waiting to retry
    STOPPED = "stopped"


@dataclass(slots=True)
class TaskHealth:
    """What `status` and /healthz say about one task."""

    name: str
    state: TaskState = TaskState.RUNNING
    failures: int = 0  # in total
    failing_for: int = 0  # in a row
    last_error: str | None = None
    last_failure_at: float | None = None  # wall clock
    retry_in: float | None = None

    def describe(self) -> dict[str, Any]:
        return {"state": self.state.value, "failures": self.failures, "failures_in_a_row": self.failing_for,
                "last_error": self.last_error, "last_failure_at": self.last_failure_at, "retry_in": self.retry_in}


def cause(exc: BaseException) -> str:
    """A one-line cause: `OSError: [Errno 28] No space left on device`, the root of a chain included."""
    text = f"{type(exc).__name__}: {exc}"
    root = exc.__cause__ or exc.__context__
    if root is not None and root is not exc:
        text += f" (caused by {type(root).__name__}: {root})"
    return text.replace("\n", " ")


class Supervisor:
    def __init__(self, counters: Counters, *, wallclock: Callable[[], float] = time.time,
                 jitter: Callable[[], float] = random.random) -> None:
        self.counters, self.wallclock, self.jitter = counters, wallclock, jitter
        self.health: dict[str, TaskHealth] = {}
        self._tasks: list[tuple[str, asyncio.Task[None]]] = []  # the ones `stop()` ends (not the owned)

    # ---- starting -----------------------------------------------------------------------------

    def loop(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        """Run `factory()` for ever: restart it with back-off whenever it raises or returns."""
        self._start(name, self._loop(name, factory))

    def every(self, name: str, interval: float, step: Callable[[], Awaitable[None]],
              sooner: asyncio.Event | None = None) -> None:
        """Run `step()` every `interval` seconds, or as soon as `sooner` is set; a failing step is retried
        with back-off instead."""
        self._start(name, self._every(name, interval, step, sooner))

    def owned(self, name: str, factory: Callable[[], Awaitable[None]],
              finished: Callable[[], bool] = lambda: False) -> asyncio.Task[None]:
        """Run `factory()` like `loop`, for an owner that cancels or awaits the returned task itself."""
        self.health[name] = TaskHealth(name)
        return asyncio.ensure_future(self._loop(name, factory, finished))

    def _start(self, name: str, coro: Awaitable[None]) -> None:
        self.health[name] = TaskHealth(name)
        self._tasks.append((name, asyncio.ensure_future(coro)))

    # ---- what they look like --------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        return all(h.state is TaskState.RUNNING for h in self.health.values())

    def failing(self) -> list[str]:
        return [name for name, h in self.health.items() if h.state is TaskState.FAILING]

    def describe(self) -> dict[str, dict[str, Any]]:
        return {name: h.describe() for name, h in sorted(self.health.items())}

    # ---- the bookkeeping of a failure and a recovery ----------------------------------------------

    def failed(self, name: str, exc: BaseException) -> float:
        """Count and (once per distinct cause) log a failure; returns the back-off before the retry."""
        h = self.health[name]
        why = cause(exc)
        wait = next_backoff(min(h.failing_for, 32), self.jitter(), base=RETRY_BASE, cap=RETRY_CAP)
        self.counters.inc("edgegate_task_failures_total", task=name)
        if why != h.last_error or h.failing_for == 0:
            # Once per cause: a full disk retried every minute for a day is one line, not 1,440.
            log.error("%s failed, retrying with back-off (first retry in %.1f s): %s", name, wait, why,
                      exc_info=exc if not isinstance(exc, OSError) else None)
        h.state, h.last_error, h.last_failure_at, h.retry_in = TaskState.FAILING, why, self.wallclock(), wait
        h.failures += 1
        h.failing_for += 1
        return wait

    def recovered(self, name: str) -> None:
        h = self.health[name]
        if h.state is TaskState.FAILING:
            log.warning("%s recovered after %d failed attempt(s); last error was: %s", name, h.failing_for,
                        h.last_error)
        h.state, h.failing_for, h.retry_in = TaskState.RUNNING, 0, None

    # ---- the two shapes ---------------------------------------------------------------------------

    async def _loop(self, name: str, factory: Callable[[], Awaitable[None]],
                    finished: Callable[[], bool] = lambda: False) -> None:
        loop = asyncio.get_running_loop()
        h = self.health[name]
        while True:
            h.state, h.retry_in = TaskState.RUNNING, None
            started = loop.time()
            try:
                await factory()
                if finished():
                    h.state = TaskState.STOPPED
                    return
                raise RuntimeError("returned; a long-running task must not end")
            except asyncio.CancelledError:
                h.state = TaskState.STOPPED
                raise
            except Exception as exc:
                if loop.time() - started >= STABLE_AFTER:
                    self.recovered(name)  # it ran well for a while: this is a new failure, not the same one
                wait = self.failed(name, exc)
                if finished():
                    h.state = TaskState.STOPPED  # failed while its owner was ending it: nothing to retry for
                    return
                await asyncio.sleep(wait)

    async def _every(self, name: str, interval: float, step: Callable[[], Awaitable[None]],
                     sooner: asyncio.Event | None) -> None:
        while True:
            if sooner is not None:
                sooner.clear()  # before the step: what is set during it asks for the next one
            try:
                await step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await asyncio.sleep(self.failed(name, exc))
                continue
            self.recovered(name)
            if sooner is None:
                await asyncio.sleep(interval)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(sooner.wait(), interval)

    async def stop(self) -> None:
        """Cancel every task but the owned ones and wait for each to end; a task that fails while ending is
        logged, not raised."""
        for _name, task in self._tasks:
            task.cancel()
        for name, task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                try:
                    await task
                except Exception as exc:
                    log.error("a supervised task failed while stopping: %s", cause(exc))
            self.health[name].state = TaskState.STOPPED
        self._tasks.clear()

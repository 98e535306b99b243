"""Read turns: how much of one event-loop turn device reads may take, so the forwarder, the timers and the
commits get theirs.

The event loop runs every ready socket's read in one turn. At 5,000 devices x 1 msg/s in one CPU a turn
took 0.5-1.8 s of reads (and handshakes, during a connect storm), and everything else the gateway does
waited behind it: a POST to the hub takes about ten turns, so the forwarder sent 700-2,200 readings/s
while the front door took 5,000 in; the outbox grew by half a million readings in four minutes, the
index and the sessions' in-flight messages with it, until the cgroup killed the gateway at 256 MiB
(`python -m bench.fleet_bench 5000 --interval 1 --memory-max 256M --cpus 1`, December 7).

So device reads share a budget of BUDGET seconds per turn. Once it is spent, a device whose bytes arrive
keeps them aside, stops being read (TCP slows it down, as any busy server would) and joins a queue; the
queue is served first-come first-served, a budget's worth at a time, each time round the loop. While the
queue is not empty, every new read joins it at the back, so nobody is served twice before a waiting
device is served once. A loop with CPU to spare never spends the budget, and nothing changes for it.

A device whose read was big (gateway.frontdoor.connection.READ_TURN_BYTES, a flood) joins the same queue
after that read, with nothing set aside: one queue, one order, for both ways a turn ends. So does every
device when a hold (the forward pacer's, the memory guard's) lets go of it: its turn grants it one read,
handled when it comes, without waiting again. A grant costs nothing until the bytes arrive, so grants are
counted in bytes: a turn grants as many reads as GRANT_BYTES holds at the size granted reads have had
lately. A device held for seconds has its whole window of readings waiting in its socket: 4,119 devices
resumed at once read ~170 MiB into memory in one turn of the loop (2 KiB readings, bench.fleet_bench --pad
2048 --memory-max 256M: the kernel killed the gateway, December 7); at a fixed 32 grants a turn, a fleet
of small readings took ~6 s to come round (PUBACK p50 5.2 s in the must-show).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

# 20 ms of reads a turn: enough for ~150 readings (at ~130 µs each) or five handshakes, short enough
# that a ten-turn POST waits ~0.3 s for the loop instead of ten seconds.
BUDGET = 0.02
# The bytes of granted reads one turn lets in (estimated from the recent ones), and the bounds on how many
# reads that is: 1 MiB is 23 full windows of 20 readings of 2 KiB. 64 grants a turn come round 5,000 devices
# as fast as 1,024 did (PUBACK p50 5-6 s either way in the must-show; the CPU is the limit there), and a turn
# of them let go after a hold, each with a full window of big readings, is ~3 MiB, not 44. Short of memory
# (the memory guard refusing), a turn grants GRANTS_MIN.
GRANT_BYTES = 1024 * 1024
GRANTS_MIN, GRANTS_MAX = 8, 64
GRANT_SIZE_START = 4096  # the estimate before any granted read has been seen


class Waiting(Protocol):
    def take_turn(self) -> bool:
        """Handle the bytes set aside and read again; False if nothing was set aside (a read was granted)."""


class ReadTurns:
    """The shared budget and the queue of devices waiting for a turn (one per front door)."""

    __slots__ = ("_call_soon", "_clock", "_open", "_started", "budget", "deferred", "grant_size", "held", "queue",
                 "scarce")

    def __init__(self, call_soon: Callable[[Callable[[], None]], object], *, budget: float = BUDGET,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.budget, self._call_soon, self._clock = budget, call_soon, clock
        self.grant_size = float(GRANT_SIZE_START)  # bytes a granted read has brought, lately (a moving average)
        self.queue: deque[Waiting] = deque()
        self._open = False  # a turn's budget is being spent; it closes at the next ready callback
        self._started = 0.0
        self.deferred = 0  # waits for a turn (counted in edgegate_reads_deferred_total)
        self.held = False  # the front door holds every device's reads: nobody is served, nobody loses their place
        self.scarce = False  # memory is short: GRANTS_MIN a turn

    def must_wait(self) -> bool:
        """May a read be handled now (False), or must it join the queue (True)?"""
        if self.queue:
            return True
        if not self._open:
            self._begin()
            return False
        return self._clock() - self._started >= self.budget

    def granted(self, size: int) -> None:
        """A granted read of `size` bytes is handled now, whatever the queue: its time counts against this
        turn's budget, and its size in the estimate of what the next grants will bring."""
        # Up at once, down slowly: the reads granted after a hold bring whole windows, before any has come.
        self.grant_size = max(float(size), self.grant_size + (size - self.grant_size) / 8)
        if not self._open:
            self._begin()

    def grants(self) -> int:
        """How many reads one turn may grant."""
        if self.scarce:
            return GRANTS_MIN
        return max(GRANTS_MIN, min(GRANTS_MAX, int(GRANT_BYTES / max(self.grant_size, 1.0))))

    def wait(self, conn: Waiting) -> None:
        """Join the back of the queue: a read past the budget, or a device whose big read ended its turn."""
        self.deferred += 1
        self.queue.append(conn)
        if not self._open:
            self._begin()  # someone must come round to the queue

    def hold(self, held: bool) -> None:
        """The front door holds (or lets go of) every admitted device: the queue stands still meanwhile, in
        order, so that the devices a hold caught waiting are the first served after it, not sent to the back
        (each forward-pacer hold did that to the same devices, whose PUBACKs then waited up to a minute)."""
        self.held = held
        if not held and self.queue and not self._open:
            self._begin()

    def _begin(self) -> None:
        self._open, self._started = True, self._clock()
        # Runs once the loop has dispatched this turn's reads: the budget is fresh for the next turn.
        self._call_soon(self._next)

    def _next(self) -> None:
        self._open = False
        queue = self.queue
        if not queue or self.held:
            return
        self._begin()
        clock, started, budget = self._clock, self._started, self.budget
        most = self.grants()
        grants = 0 if queue.popleft().take_turn() else 1  # at least one a turn, whatever the budget
        while queue and clock() - started < budget and grants < most:
            if not queue.popleft().take_turn():
                grants += 1

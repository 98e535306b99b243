"""Forward pacing: when the gateway's own CPU, not the hub, is why the outbox grows, devices wait.

Device reads and the forwarder share one event loop. Each reading costs the loop a read, a decryption,
a submit and a PUBACK; each POST to the hub takes about ten turns of the loop (the outbox read, the
encoding in slices, the request, the answer, the removal). When devices offer more than the CPU can
carry, every turn waits behind thousands of device reads, and the forwarder falls behind the readings
it has just acknowledged: 5,000 devices x 1 msg/s in one CPU took readings in at 2,800/s and sent them
on at 1,250/s, until the outbox reached its cap and the gateway started disconnecting devices to push
back (`python -m bench.fleet_bench 5000 --cpus 1 --load lean`).

The pacer holds device reads (the front door pauses reading their sockets; TCP slows the devices, and
their PUBACKs come later) while the forwarder catches up. It holds only when all of these are true:

- the hub is taking messages (the last POST succeeded): a hub outage is what the outbox is for;
- the outbox holds at least `high` messages;
- the event loop is running late by at least `lag`: the CPU is the bottleneck. A slow uplink leaves
  the loop idle, and the outbox buffering that site's bursts is exactly what store-and-forward is for.

A hold lasts until the outbox is down to `low`, the hub stops taking messages, or `hold_max` has passed;
the next one waits at least `release_min`. So devices are never held for more than half of the time,
whatever the forwarder does, and a CPU spike from elsewhere costs them at most that.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("edgegate.upstream")

HIGH = 10_000  # two full POSTs waiting
LOW = 2_000
LAG = 0.05  # seconds the loop runs late before the CPU counts as the bottleneck
HOLD_MAX = 1.0
RELEASE_MIN = 1.0
TICK = 0.1
LOG_EVERY = 60.0


@dataclass(frozen=True, slots=True)
class Pace:
    holding: bool = False
    since: float = float("-inf")  # when the hold began, or when the last one ended


def pace(state: Pace, now: float, *, depth: int, lag: float, hub_taking: bool, high: int = HIGH, low: int = LOW,
         min_lag: float = LAG, hold_max: float = HOLD_MAX, release_min: float = RELEASE_MIN) -> Pace:
    """The pacer's next state (pure): hold device reads, or let them go on."""
    if state.holding:
        if not hub_taking or depth <= low or now - state.since >= hold_max:
            return Pace(False, now)
        return state
    if hub_taking and depth >= high and lag >= min_lag and now - state.since >= release_min:
        return Pace(True, now)
    return state


class ForwardPacer:
    """Every TICK: measure how late the loop runs, decide, and tell the front door (`hold(True/False)`)."""

    def __init__(self, *, depth: Callable[[], int], hub_taking: Callable[[], bool], hold: Callable[[bool], int],
                 count: Callable[[], None] = lambda: None, tick: float = TICK) -> None:
        self.depth, self.hub_taking, self.hold, self.count, self.tick = depth, hub_taking, hold, count, tick
        self.state = Pace()
        self.holds = 0
        self._logged_at = float("-inf")

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                due = loop.time() + self.tick
                await asyncio.sleep(self.tick)
                now = loop.time()
                self.step(now, max(0.0, now - due))
        finally:
            if self.state.holding:
                self.hold(False)
                self.state = Pace()

    def step(self, now: float, lag: float) -> None:
        before = self.state
        depth = self.depth()
        self.state = pace(before, now, depth=depth, lag=lag, hub_taking=self.hub_taking())
        if self.state.holding == before.holding:
            return
        held = self.hold(self.state.holding)
        if self.state.holding:
            self.holds += 1
            self.count()
            if now - self._logged_at >= LOG_EVERY:
                self._logged_at = now
                log.warning("the forwarder falls behind for lack of CPU (%d messages waiting for a reachable hub, "
                            "the event loop %.0f ms late): reading %d devices paused for up to %g s at a time so "
                            "it catches up (logged once a minute; edgegate_read_holds_total counts them)",
                            depth, lag * 1000, held, HOLD_MAX)

"""The memory guard: what the gateway does when the memory it measures, not the memory it estimated, nears
the limit it runs under.

The connection budget (budget.py) is an estimate made at start: an idle device's cost times the devices,
plus a margin. What it cannot see, the kernel counts all the same: busy devices cost more than idle ones
(34 KiB each, not 24, at 5,000 devices x 1 reading/s in one CPU: the readings in flight, waiting for their
commit), bigger readings cost more in flight again, the outbox's index grows with a backlog, and a heap
fragmented by a connect storm keeps its holes. Past the limit the kernel kills the gateway, which is the
worst answer: every device reconnects at once, into the same wall.

So every TICK the gateway reads its own anonymous memory (what the kernel cannot reclaim; file pages it
can) and compares it with the limit. Under a cgroup v2 memory.max (systemd's MemoryMax= on a current
distribution, Raspberry Pi OS included) it reads that cgroup's usage less its page cache instead: v2 also
charges the sockets' buffers and kernel memory to the cgroup, and 5,000 held devices with a window of
readings each in their receive buffers are tens of MiB that /proc/self/statm never shows. (Under v1 the
sockets are not charged to memory.limit_in_bytes.)

- at refuse_at of the limit (Marks) it refuses new device connections at accept, before their handshakes allocate
  anything (edgegate_connections_refused_total{reason="memory_pressure"}, summarised in the log); the
  devices already connected, the hub link and the outbox go on;
- at hold_at it also stops reading the connected devices. Their readings wait on their side, unacknowledged
  (nothing acknowledged is at risk, nothing is dropped), and TCP slows them; the forwarder and the commits
  go on, so a backlog drains and what was in flight is freed. The C heap is trimmed at once, and every
  TRIM_UNDER_PRESSURE seconds while the guard holds on, so that what was freed is measured as free.

Each lets go a few percent of the limit lower than it took hold, and only once memory has stayed that low
for SETTLE seconds (a heap trim dips the measurement for a moment), so a gateway at the edge does not flap.

A hold that memory does not end within SHED_AFTER seconds means the devices themselves fill it: 4,617
devices with 2 KiB readings sat at 227-231 MiB of 256 with the outbox empty, and the moment the hold ended
their waiting windows came in and the kernel killed the gateway (bench.fleet_bench --pad 2048, December 7).
So the guard sheds load: every SHED_AFTER seconds of such a hold it disconnects SHED_FRACTION of the
devices, the most recently connected first. They keep their unacknowledged readings, and are refused
while memory is short when they dial again.

A shed also sets a ceiling: the devices left connected are what the memory holds at this load, and the
front door admits no more than that, whatever memory measures. Without it the gateway flapped: memory a
shed device freed stays mostly with Python's allocator and the C heap (shedding 218 devices lowered the
measurement by 2 MiB), so the measurement fell only as the held devices' readings drained, the guard
admitted again, the fleet dialled back in, and it held and shed again, every few seconds for minutes (81
guard lines in 6.5 minutes, bench.fleet_bench --pad 2048, December 7). The ceiling rises by SHED_FRACTION
after every RAISE_AFTER seconds that it is full and memory clear, so a load that eases is served again; a
changed limit (a reload) lifts it.

The shares leave room under the kill: the kernel also counts page cache it could not reclaim in time and
the sockets' buffers, and at 256 MiB the gateway was killed with 247.7 MiB (96.8 %) anonymous (December 7).
Where there is no limit, there is no guard.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("edgegate.service")

MIB = 1024 * 1024
TICK = 0.25  # a connect storm adds ~10 MiB/s at most; a quarter second of it is 1 % of 256 MiB
# Under pressure the C heap is trimmed this often (besides gateway.service.heap's every 30 s): what a hold
# frees (a drained backlog, readings no longer in flight) shows in the measurement only once it is given
# back, and until then the guard holds devices for memory the gateway no longer uses. 5,000 devices with
# 2 KiB readings were held 28 s at 242 MiB while the outbox drained 120,000 readings, until the 30 s trim
# gave back 22 MiB at once (bench.fleet_bench --pad 2048 --memory-max 256M, December 7).
TRIM_UNDER_PRESSURE = 2.0
SETTLE = 1.0
SHED_AFTER = 5.0
SHED_FRACTION = 0.05
RAISE_AFTER = 60.0


@dataclass(frozen=True, slots=True)
class Marks:
    """Shares of the memory limit where the guard takes hold, and where it lets go."""

    refuse_at: float = 0.90
    admit_below: float = 0.86
    hold_at: float = 0.93
    read_below: float = 0.88


MARKS = Marks()


class Pressure(enum.IntEnum):
    CLEAR = 0
    REFUSING = 1  # new connections refused
    HOLDING = 2  # ... and connected devices' reads held


def pressure(current: Pressure, used: int, limit: int, marks: Marks = MARKS) -> Pressure:
    """The guard's next state (pure), from the anonymous bytes in use and the limit."""
    share = used / limit
    if share >= marks.hold_at or (current is Pressure.HOLDING and share >= marks.read_below):
        return Pressure.HOLDING
    if share >= marks.refuse_at or (current >= Pressure.REFUSING and share >= marks.admit_below):
        return Pressure.REFUSING
    return Pressure.CLEAR


def anonymous_bytes(statm: str, page_size: int) -> int:
    """Resident anonymous memory from the text of /proc/<pid>/statm: resident pages less the file-backed
    and shared ones (the kernel's RssAnon)."""
    fields = statm.split()
    return (int(fields[1]) - int(fields[2])) * page_size


def read_anonymous(statm: Path = Path("/proc/self/statm")) -> int | None:
    """This process's anonymous memory now; None where /proc cannot tell."""
    try:
        return anonymous_bytes(statm.read_text(), os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, IndexError):
        return None


def cgroup_unreclaimable(current: str, stat: str) -> int:
    """What a cgroup v2 holds that reclaim cannot free, from the text of its memory.current and memory.stat:
    the usage less the file pages on the LRU lists and the reclaimable slab (shmem is swap-backed, and
    stays counted)."""
    fields = dict(line.split(maxsplit=1) for line in stat.splitlines() if " " in line)
    reclaimable = sum(int(fields.get(name, "0")) for name in ("active_file", "inactive_file", "slab_reclaimable"))
    return max(0, int(current) - reclaimable)


def read_cgroup_unreclaimable(directory: Path) -> int | None:
    """The cgroup's memory that reclaim cannot free now; None where it cannot be read."""
    try:
        return cgroup_unreclaimable((directory / "memory.current").read_text(),
                                    (directory / "memory.stat").read_text())
    except (OSError, ValueError):
        return None


class MemoryGuard:
    """Every TICK: measure, decide, and tell the front door (`refuse(bool)`, `hold(bool)` -> devices held,
    `shed(fraction)` -> devices disconnected, `cap(ceiling)`); `connected()` counts its devices."""

    def __init__(self, *, limit: Callable[[], int | None], refuse: Callable[[bool], None],
                 hold: Callable[[bool], int], trim: Callable[[], Awaitable[object]], connected: Callable[[], int],
                 shed: Callable[[float], int] = lambda _: 0, count: Callable[[Pressure], None] = lambda _: None,
                 cap: Callable[[int | None], None] = lambda _: None,
                 used: Callable[[], int | None] = read_anonymous, marks: Marks = MARKS, tick: float = TICK) -> None:
        self.limit, self.used, self.refuse, self.hold, self.trim = limit, used, refuse, hold, trim
        self.shed, self.count, self.connected, self.cap = shed, count, connected, cap
        self.marks, self.tick = marks, tick
        self.shed_total = 0  # devices disconnected to make room
        self.ceiling: int | None = None  # the most devices admitted, since a shed showed what memory holds
        self._ceiling_limit: int | None = None  # the limit the ceiling was learnt under
        self._ceiling_at = 0.0  # when the ceiling was set or last raised
        self.state = Pressure.CLEAR
        self.last_used: int | None = None
        self._since = 0.0  # when the current state began (loop time)
        self._trimmed = float("-inf")  # when the guard last trimmed the heap (loop time)
        self._lower_since: float | None = None  # since when memory says "let go", if it does
        self._shed_at = 0.0  # when the hold began or last shed devices

    def status(self) -> dict[str, object]:
        limit, used = self.limit(), self.last_used
        return {"anonymous_mib": None if used is None else round(used / MIB, 1),
                "limit_mib": None if limit is None else round(limit / MIB, 1),
                "pressure": self.state.name.lower(), "ceiling": self.ceiling}

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                await asyncio.sleep(self.tick)
                now = loop.time()
                if self.step(now) or (self.state is not Pressure.CLEAR
                                      and now - self._trimmed >= TRIM_UNDER_PRESSURE):
                    self._trimmed = now
                    await self.trim()
        finally:
            self._act(self.state, Pressure.CLEAR)
            self.state = Pressure.CLEAR

    def step(self, now: float) -> bool:
        """One measurement; True if memory is now held more tightly than before (time to trim the heap)."""
        limit, used = self.limit(), self.used()
        if used is None:
            return False
        self.last_used = used
        if self.ceiling is not None and limit != self._ceiling_limit:
            self._set_ceiling(None, now)
            log.info("the memory limit changed: the ceiling on connected devices is lifted")
        before = self.state
        after = Pressure.CLEAR if limit is None else pressure(before, used, limit, self.marks)
        if after >= before:
            self._lower_since = None
        elif limit is not None:
            if self._lower_since is None:
                self._lower_since = now
            if now - self._lower_since < SETTLE:
                after = before  # not yet: a trim dips the measurement for a moment
        if after == before:
            if after is Pressure.HOLDING and limit is not None and now - self._shed_at >= SHED_AFTER:
                self._shed(now, used, limit)
            elif after is Pressure.CLEAR and limit is not None:
                self._raise_ceiling(now, used, limit)
            return False
        self._lower_since = None
        if after is Pressure.HOLDING:
            self._shed_at = now
        self.state = after
        held = self._act(before, after)
        self._report(before, after, used, limit, held, now - self._since)
        self._since = now
        return after > before

    def _shed(self, now: float, used: int, limit: int) -> None:
        self._shed_at = now
        connected = self.connected()
        gone = self.shed(SHED_FRACTION)
        self.shed_total += gone
        left = max(1, connected - gone)
        self._set_ceiling(left if self.ceiling is None else min(self.ceiling, left), now)
        self._ceiling_limit = limit
        log.warning("memory still at %.0f MiB of the %.0f MiB limit (%.0f%%) after %.0f s of held reads: "
                    "disconnected %d of %d devices, the most recently connected, to make room (they keep their "
                    "unacknowledged readings; edgegate_memory_shed_total), and admitting at most %d from now on, "
                    "%.0f KiB of memory a device at this load; raised after every %.0f s it is full and memory "
                    "clear. To serve more, give the gateway more memory ([limits] memory or the service's "
                    "MemoryMax=) or its devices smaller readings",
                    used / MIB, limit / MIB, 100 * used / limit, now - self._since, gone, connected,
                    self.ceiling, used / max(1, connected) / 1024, RAISE_AFTER)

    def _raise_ceiling(self, now: float, used: int, limit: int) -> None:
        """Raise the ceiling a step once it has been full, with memory clear, for RAISE_AFTER seconds."""
        ceiling = self.ceiling
        if ceiling is None or now - max(self._ceiling_at, self._since) < RAISE_AFTER:
            return
        if self.connected() < ceiling:
            self._ceiling_at = now  # not full: memory clear says nothing about more devices
            return
        self._set_ceiling(ceiling + max(1, round(ceiling * SHED_FRACTION)), now)
        log.info("memory at %.0f MiB of the %.0f MiB limit (%.0f%%) for %.0f s with the ceiling of %d devices "
                 "full: admitting up to %d", used / MIB, limit / MIB, 100 * used / limit, RAISE_AFTER, ceiling,
                 self.ceiling)

    def _set_ceiling(self, ceiling: int | None, now: float) -> None:
        self.ceiling = ceiling
        self._ceiling_at = now
        self.cap(ceiling)

    def _act(self, before: Pressure, after: Pressure) -> int:
        if (before >= Pressure.REFUSING) != (after >= Pressure.REFUSING):
            self.refuse(after >= Pressure.REFUSING)
        if (before is Pressure.HOLDING) != (after is Pressure.HOLDING):
            return self.hold(after is Pressure.HOLDING)
        return 0

    def _report(self, before: Pressure, after: Pressure, used: int, limit: int | None, held: int,
                lasted: float) -> None:
        if after > before:
            self.count(after)
        if limit is None:
            log.info("no memory limit any more: admitting and reading devices again")
            return
        m = self.marks
        figures = f"memory at {used / MIB:.0f} MiB of the {limit / MIB:.0f} MiB limit ({used / limit:.0%})"
        if after is Pressure.HOLDING and before < after:
            log.warning("%s: pausing reads of the %d connected devices (their readings wait on their side, "
                        "unacknowledged) and refusing new ones, until it is below %.0f MiB; the hub link and "
                        "the outbox go on (edgegate_memory_pressure_total counts these)",
                        figures, held, limit * m.read_below / MIB)
        elif after is Pressure.REFUSING and before < after:
            log.warning("%s: refusing new device connections until it is below %.0f MiB; connected devices, "
                        "the hub link and the outbox go on (edgegate_memory_pressure_total counts these)",
                        figures, limit * m.admit_below / MIB)
        elif after is Pressure.REFUSING:
            log.info("%s: reading connected devices again after %.1f s; still refusing new ones until it is "
                     "below %.0f MiB", figures, lasted, limit * m.admit_below / MIB)
        elif before is Pressure.HOLDING:
            log.info("%s: reading connected devices and admitting new ones again after %.1f s", figures, lasted)
        else:
            log.info("%s: admitting new devices again after %.1f s", figures, lasted)

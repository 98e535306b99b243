"""gateway.service.memory_guard: the decision over measured memory, the measurement, and what the guard
tells the front door on each change."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from gateway.service import memory_guard
from gateway.service.memory_guard import (
    MARKS,
    MIB,
    MemoryGuard,
    Pressure,
    anonymous_bytes,
    cgroup_unreclaimable,
    pressure,
    read_anonymous,
    read_cgroup_unreclaimable,
)

CLEAR, REFUSING, HOLDING = Pressure.CLEAR, Pressure.REFUSING, Pressure.HOLDING
LIMIT = 1000 * MIB


@pytest.mark.parametrize(("current", "share", "expected", "why"), [
    (CLEAR, 0.50, CLEAR, "far from the limit"),
    (CLEAR, 0.8999, CLEAR, "just under refuse_at"),
    (CLEAR, 0.90, REFUSING, "at refuse_at: new devices are refused"),
    (CLEAR, 0.93, HOLDING, "a jump straight to hold_at holds reads too"),
    (CLEAR, 1.20, HOLDING, "over the limit (a configured limit, not a cgroup)"),
    (REFUSING, 0.87, REFUSING, "between admit_below and refuse_at: still refusing (hysteresis)"),
    (REFUSING, 0.86, REFUSING, "at admit_below: still refusing"),
    (REFUSING, 0.8599, CLEAR, "below admit_below: admitting again"),
    (REFUSING, 0.9299, REFUSING, "just under hold_at: reads go on"),
    (REFUSING, 0.93, HOLDING, "at hold_at"),
    (HOLDING, 0.92, HOLDING, "between read_below and hold_at: still holding (hysteresis)"),
    (HOLDING, 0.99, HOLDING, "still rising"),
    (HOLDING, 0.89, HOLDING, "under refuse_at but above read_below: still holding"),
    (HOLDING, 0.88, HOLDING, "at read_below: still holding"),
    (HOLDING, 0.8799, REFUSING, "below read_below: reading again, still refusing"),
    (HOLDING, 0.86, REFUSING, "at admit_below: still refusing"),
    (HOLDING, 0.50, CLEAR, "a big drop (a drained backlog) lets go of both at once"),
])
def test_pressure(current: Pressure, share: float, expected: Pressure, why: str) -> None:
    assert pressure(current, round(LIMIT * share), LIMIT) is expected, why


def test_the_marks_let_go_below_where_they_took_hold_and_leave_room_under_the_kill() -> None:
    assert MARKS.admit_below < MARKS.refuse_at < MARKS.hold_at
    assert MARKS.admit_below < MARKS.read_below < MARKS.hold_at
    # The gateway was killed at 96.8 % anonymous of a 256 MiB cgroup (the module's docstring), and the
    # measurement can overshoot hold_at by ~1 % between two ticks.
    assert MARKS.hold_at <= 0.94


@pytest.mark.parametrize(("statm", "page", "expected"), [
    ("1000 600 100 10 0 500 0\n", 4096, 500 * 4096),
    ("1000 600 600 10 0 500 0", 4096, 0),
    ("52345 41000 2000 1200 0 45000 0", 16384, 39000 * 16384),
])
def test_anonymous_bytes(statm: str, page: int, expected: int) -> None:
    assert anonymous_bytes(statm, page) == expected


def test_read_anonymous_sees_this_process_touch_memory() -> None:
    before = read_anonymous()
    assert before is not None
    assert before > MIB
    ballast = bytearray(64 * MIB)
    for i in range(0, len(ballast), 4096):
        ballast[i] = 1  # touch every page so it is resident
    after = read_anonymous()
    assert after is not None
    assert after - before >= 48 * MIB
    del ballast


def test_read_anonymous_is_none_where_proc_cannot_tell(tmp_path: Path) -> None:
    assert read_anonymous(tmp_path / "missing") is None
    (tmp_path / "statm").write_text("garbage")
    assert read_anonymous(tmp_path / "statm") is None


# A cgroup v2 memory.stat as a 6.1 kernel writes it (abridged: the fields the guard reads, and some it must not).
V2_STAT = """anon 188743680
file 52428800
kernel 12582912
kernel_stack 1638400
pagetables 3145728
percpu 102400
sock 41943040
vmalloc 0
shmem 1048576
file_mapped 10485760
file_dirty 4096
file_writeback 0
inactive_anon 1048576
active_anon 188743680
inactive_file 31457280
active_file 19922944
unevictable 0
slab_reclaimable 2097152
slab_unreclaimable 5242880
slab 7340032
"""


@pytest.mark.parametrize(("current", "stat", "expected", "why"), [
    ("296000000\n", V2_STAT, 296000000 - 31457280 - 19922944 - 2097152,
     "less the file LRU and the reclaimable slab: anon, sockets, kernel and shmem stay"),
    ("1000\n", "anon 1000\n", 1000, "nothing reclaimable"),
    ("1000\n", "inactive_file 5000\n", 0, "never below zero (the two files are read a moment apart)"),
    ("0\n", "", 0, "an empty cgroup"),
])
def test_cgroup_unreclaimable(current: str, stat: str, expected: int, why: str) -> None:
    assert cgroup_unreclaimable(current, stat) == expected, why


def test_read_cgroup_unreclaimable_reads_the_cgroup_directory(tmp_path: Path) -> None:
    (tmp_path / "memory.current").write_text("296000000\n")
    (tmp_path / "memory.stat").write_text(V2_STAT)
    assert read_cgroup_unreclaimable(tmp_path) == 296000000 - 31457280 - 19922944 - 2097152
    (tmp_path / "memory.current").write_text("max\n")
    assert read_cgroup_unreclaimable(tmp_path) is None
    assert read_cgroup_unreclaimable(tmp_path / "gone") is None


class Door:
    """What the guard drives: the front door's refusal and hold, recorded."""

    def __init__(self) -> None:
        self.refusing = False
        self.holding = False
        self.calls: list[str] = []

    def refuse(self, on: bool) -> None:
        self.refusing = on
        self.calls.append(f"refuse {on}")

    def hold(self, on: bool) -> int:
        self.holding = on
        self.calls.append(f"hold {on}")
        return 7


def guard_with(door: Door, readings: list[int | None], limit: int | None = LIMIT,
               counted: list[Pressure] | None = None) -> MemoryGuard:
    values = iter(readings)

    async def trim() -> None:
        door.calls.append("trim")

    return MemoryGuard(limit=lambda: limit, used=lambda: next(values), refuse=door.refuse, hold=door.hold,
                       trim=trim, connected=lambda: 7,
                       count=(counted.append if counted is not None else lambda _: None))


def test_each_change_acts_once_and_only_on_what_changed(caplog: pytest.LogCaptureFixture) -> None:
    door, counted = Door(), []
    steps = [(0, 500), (1, 905), (2, 920), (3, 950), (4, 960), (5, 870), (5.5, 872), (6, 875), (7, 850),
             (7.5, 900), (8, 850), (9, 850), (10, 990), (11, 100), (12, 100)]
    guard = guard_with(door, [mib * MIB for _, mib in steps], counted=counted)
    caplog.set_level(logging.INFO, "edgegate.service")
    tighter = [guard.step(float(t)) for t, _ in steps]
    assert [t for (t, _), up in zip(steps, tighter, strict=True) if up] == [1, 3, 10]
    assert door.calls == ["refuse True", "hold True", "hold False", "refuse False",
                          "refuse True", "hold True", "refuse False", "hold False"]
    assert counted == [REFUSING, HOLDING, HOLDING]
    assert guard.state is CLEAR
    assert not door.refusing
    assert not door.holding
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("memory at 905 MiB of the 1000 MiB limit (90%): refusing new device connections "
                               "until it is below 860 MiB")
    assert "pausing reads of the 7 connected devices" in lines[1]
    assert "below 880 MiB" in lines[1]
    # Let go only after a second below the mark: held from t=3 to t=6, refusing from t=6 to t=9 (the 900
    # at t=7.5 started the second over).
    assert "memory at 875 MiB" in lines[2]
    assert "reading connected devices again after 3.0 s" in lines[2]
    assert "admitting new devices again after 3.0 s" in lines[3]
    assert "reading connected devices and admitting new ones again after 2.0 s" in lines[5]
    assert [r.levelno for r in caplog.records] == [logging.WARNING, logging.WARNING, logging.INFO, logging.INFO,
                                                   logging.WARNING, logging.INFO]


def test_a_hold_memory_does_not_end_sheds_the_newest_devices_every_few_seconds(
        caplog: pytest.LogCaptureFixture) -> None:
    door, shed = Door(), []
    times = [0.0, 1.0, 4.0, 6.0, 8.0, 11.0, 12.0, 13.0]
    readings = iter([950 * MIB] * 6 + [800 * MIB] * 2)

    def shed_some(fraction: float) -> int:
        shed.append(fraction)
        return 12

    guard = MemoryGuard(limit=lambda: LIMIT, used=lambda: next(readings), refuse=door.refuse, hold=door.hold,
                        trim=asyncio.sleep, shed=shed_some, connected=lambda: 240)
    caplog.set_level(logging.WARNING, "edgegate.service")
    for t in times:
        guard.step(t)
    # Held at t=0; 5 s later (t=6) and 5 s after that (t=11) a twentieth of the devices go.
    assert shed == [memory_guard.SHED_FRACTION] * 2
    assert guard.shed_total == 24
    assert guard.state is CLEAR  # memory fell at t=12 and stayed down a second
    lines = [r.getMessage() for r in caplog.records if "disconnected" in r.getMessage()]
    assert lines[0].startswith("memory still at 950 MiB of the 1000 MiB limit (95%) after 6 s of held reads: "
                               "disconnected 12 of 240 devices, the most recently connected")


class Fleet:
    """The connected devices as the guard sees them: shed from, and capped."""

    def __init__(self, connected: int) -> None:
        self.connected = connected
        self.caps: list[int | None] = []

    def shed(self, fraction: float) -> int:
        gone = max(1, int(self.connected * fraction))
        self.connected -= gone
        return gone

    def cap(self, ceiling: int | None) -> None:
        self.caps.append(ceiling)


def ceiling_guard(door: Door, fleet: Fleet, readings: list[int], limit: list[int | None] | None = None
                  ) -> MemoryGuard:
    values = iter(readings)
    limits = limit if limit is not None else [LIMIT]
    return MemoryGuard(limit=lambda: limits[0], used=lambda: next(values), refuse=door.refuse, hold=door.hold,
                       trim=asyncio.sleep, shed=fleet.shed, cap=fleet.cap, connected=lambda: fleet.connected)


def test_a_shed_sets_a_ceiling_at_what_is_left_and_a_second_shed_lowers_it(
        caplog: pytest.LogCaptureFixture) -> None:
    door, fleet = Door(), Fleet(4000)
    guard = ceiling_guard(door, fleet, [950 * MIB] * 4)
    caplog.set_level(logging.WARNING, "edgegate.service")
    for t in (0.0, 5.0, 6.0, 10.0):
        guard.step(t)
    assert fleet.connected == 4000 - 200 - 190
    assert fleet.caps == [3800, 3610]
    assert guard.ceiling == 3610
    assert guard.status()["ceiling"] == 3610
    line = next(r.getMessage() for r in caplog.records if "disconnected" in r.getMessage())
    assert "disconnected 200 of 4000 devices" in line
    assert "admitting at most 3800 from now on, 243 KiB of memory a device at this load" in line
    assert "give the gateway more memory ([limits] memory or the service's MemoryMax=)" in line


@pytest.mark.parametrize(("story", "expected", "why"), [
    ([(0, 950), (5, 950), (6, 800), (7, 800), (67, 800)], [3800, 3990],
     "clear from t=7 and full for a minute: raised by a twentieth"),
    ([(0, 950), (5, 950), (6, 800), (7, 800), (66, 800)], [3800],
     "clear and full for 59 s: not yet"),
    ([(0, 950), (5, 950), (6, 800), (7, 800), (67, 800), (127, 800), (187, 800)], [3800, 3990, 4190, 4400],
     "still clear a minute after each raise: raised again each minute"),
    ([(0, 950), (5, 950), (6, 800), (7, 800), (40, 905), (50, 800), (51, 800), (100, 800), (111, 800)],
     [3800, 3990], "refusing at t=40 started the clear minute over: raised at t=111, not at t=67"),
    ([(0, 950), (5, 950), (6, 870), (7, 870), (100, 870)], [3800],
     "still refusing (above admit_below): never raised"),
])
def test_the_ceiling_rises_after_a_minute_full_with_memory_clear(story: list[tuple[float, int]],
                                                                 expected: list[int], why: str) -> None:
    door, fleet = Door(), Fleet(4000)
    guard = ceiling_guard(door, fleet, [mib * MIB for _, mib in story])
    for t, _ in story:
        fleet.connected = guard.ceiling or fleet.connected  # the fleet dials in as far as it is let
        guard.step(float(t))
    assert fleet.caps == expected, why


def test_a_ceiling_nobody_reaches_is_not_raised() -> None:
    door, fleet = Door(), Fleet(4000)
    guard = ceiling_guard(door, fleet, [950 * MIB, 950 * MIB, 800 * MIB, 800 * MIB, 800 * MIB, 800 * MIB])
    for t in (0.0, 5.0, 6.0, 7.0):
        guard.step(t)
    fleet.connected = 3000  # devices went away: memory clear says nothing about 3,800 and more
    guard.step(67.0)
    guard.step(200.0)
    assert fleet.caps == [3800]


def test_a_changed_limit_lifts_the_ceiling(caplog: pytest.LogCaptureFixture) -> None:
    door, fleet, limit = Door(), Fleet(4000), [LIMIT]
    guard = ceiling_guard(door, fleet, [950 * MIB, 950 * MIB, 800 * MIB], limit=limit)
    guard.step(0.0)
    guard.step(5.0)
    assert guard.ceiling == 3800
    limit[0] = 2 * LIMIT  # a reload gave [limits] memory more
    caplog.set_level(logging.INFO, "edgegate.service")
    guard.step(6.0)
    assert guard.ceiling is None
    assert fleet.caps == [3800, None]
    assert "the ceiling on connected devices is lifted" in caplog.text


def test_no_limit_no_pressure_and_a_lifted_limit_lets_go() -> None:
    door = Door()
    assert not guard_with(door, [10_000 * MIB], limit=None).step(0.0)
    assert door.calls == []
    limit: list[int | None] = [LIMIT]
    values = iter([990 * MIB, 990 * MIB])
    guard = MemoryGuard(limit=lambda: limit[0], used=lambda: next(values), refuse=door.refuse, hold=door.hold,
                        connected=lambda: 7, trim=asyncio.sleep)
    guard.step(0.0)
    assert door.refusing
    assert door.holding
    limit[0] = None  # a reload lifted [limits] memory
    guard.step(1.0)
    assert not door.refusing
    assert not door.holding
    assert guard.state is CLEAR


def test_a_failed_measurement_changes_nothing() -> None:
    door = Door()
    guard = guard_with(door, [990 * MIB, None])
    guard.step(0.0)
    assert not guard.step(1.0)
    assert guard.state is HOLDING
    assert guard.last_used == 990 * MIB


def test_run_trims_when_memory_tightens_and_again_while_it_stays_tight_and_lets_go_when_stopped(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory_guard, "TRIM_UNDER_PRESSURE", 0.05)
    door = Door()
    readings = iter([500 * MIB] * 3 + [950 * MIB] * 100_000)

    async def scenario() -> None:
        trims = asyncio.Queue[float]()

        async def trim() -> None:
            door.calls.append("trim")
            # The guard's own reading of the clock, taken just before it called trim(): the loop's clock read
            # here, a moment later, varies with the machine's load and made this test flaky.
            trims.put_nowait(guard._trimmed)

        guard = MemoryGuard(limit=lambda: LIMIT, used=lambda: next(readings), refuse=door.refuse, hold=door.hold,
                            connected=lambda: 7, trim=trim, tick=0.001)
        task = asyncio.create_task(guard.run())
        first = await asyncio.wait_for(trims.get(), 10)
        assert guard.state is HOLDING
        second = await asyncio.wait_for(trims.get(), 10)
        assert second - first >= 0.05
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert door.calls[:4] == ["refuse True", "hold True", "trim", "trim"]
    assert door.calls[-2:] == ["refuse False", "hold False"]
    assert not door.refusing
    assert not door.holding

"""ReadTurns: device reads share a budget per loop turn, and the ones past it are served in arrival order."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from gateway.frontdoor.turns import ReadTurns


class Loop:
    """A fake loop: a clock the test moves and the callbacks call_soon queued, run turn by turn."""

    def __init__(self) -> None:
        self.now = 0.0
        self.ready: list[Callable[[], None]] = []

    def call_soon(self, callback: Callable[[], None]) -> None:
        self.ready.append(callback)

    def run_ready(self) -> None:
        """One loop turn's ready callbacks (the ones queued meanwhile wait for the next turn)."""
        ready, self.ready = self.ready, []
        for callback in ready:
            callback()


class Device:
    """Records when it was served; each turn it is served costs `cost` seconds of the fake clock. With
    `aside=False` it had nothing set aside (a hold let go of it): its turn only grants it a read."""

    def __init__(self, name: str, loop: Loop, served: list[str], cost: float, *, aside: bool = True) -> None:
        self.name, self.loop, self.served, self.cost, self.aside = name, loop, served, cost, aside

    def take_turn(self) -> bool:
        self.served.append(self.name)
        if self.aside:
            self.loop.now += self.cost  # a grant costs nothing now: the read it allows is handled later
        return self.aside


def read(turns: ReadTurns, device: Device) -> bool:
    """A read arrives for `device`: handled now (True, and the clock moves) or queued (False)."""
    if turns.must_wait():
        turns.wait(device)
        return False
    device.take_turn()
    return True


def setup(budget: float = 0.02) -> tuple[Loop, ReadTurns, list[str]]:
    loop = Loop()
    return loop, ReadTurns(loop.call_soon, budget=budget, clock=lambda: loop.now), []


@pytest.mark.parametrize(("cost", "handled_at_once"), [
    (0.001, 20),  # cheap reads: twenty fit in a 20 ms turn
    (0.004, 5),  # handshakes: five
    (0.05, 1),  # one read past the whole budget still goes: the budget is checked before a read, not during
])
def test_a_turn_handles_reads_until_its_budget_is_spent(cost: float, handled_at_once: int) -> None:
    loop, turns, served = setup()
    devices = [Device(f"d{i}", loop, served, cost) for i in range(30)]
    handled = [read(turns, d) for d in devices]
    assert handled == [True] * handled_at_once + [False] * (30 - handled_at_once)
    assert turns.deferred == 30 - handled_at_once
    assert list(turns.queue) == devices[handled_at_once:]


def test_a_loop_with_cpu_to_spare_never_queues() -> None:
    loop, turns, served = setup()
    for turn in range(100):
        for i in range(10):
            assert read(turns, Device(f"t{turn}d{i}", loop, served, 0.001))
        loop.run_ready()  # the turn ends: a fresh budget for the next
    assert turns.deferred == 0
    assert len(served) == 1000


def test_the_queue_is_served_in_arrival_order_a_budget_per_turn() -> None:
    loop, turns, served = setup()
    devices = [Device(f"d{i}", loop, served, 0.005) for i in range(12)]
    for d in devices:
        read(turns, d)
    assert served == ["d0", "d1", "d2", "d3"]
    loop.run_ready()  # next turn: four more from the queue, then it yields to the rest of the loop
    assert served == [f"d{i}" for i in range(8)]
    assert len(loop.ready) == 1  # the queue's next step waits for the following turn
    loop.run_ready()
    assert served == [f"d{i}" for i in range(12)]
    loop.run_ready()
    assert not turns.queue
    assert not loop.ready


def test_while_devices_wait_a_new_read_joins_the_back_of_the_queue() -> None:
    loop, turns, served = setup()
    first = [Device(f"d{i}", loop, served, 0.01) for i in range(4)]
    for d in first:
        read(turns, d)
    assert served == ["d0", "d1"]
    loop.now += 1.0  # however long until the next read: nobody is served twice before d2 and d3 once
    late = Device("late", loop, served, 0.01)
    assert not read(turns, late)
    loop.run_ready()
    assert served == ["d0", "d1", "d2", "d3"]
    loop.run_ready()
    assert served[-1] == "late"


def test_with_no_budget_at_all_the_queue_still_moves_one_device_a_turn() -> None:
    loop, turns, served = setup(budget=0.0)
    devices = [Device(f"d{i}", loop, served, 0.0) for i in range(3)]
    assert [read(turns, d) for d in devices] == [True, False, False]
    loop.run_ready()
    assert served == ["d0", "d1"]
    loop.run_ready()
    assert served == ["d0", "d1", "d2"]


def test_joining_the_queue_outside_a_turn_schedules_one() -> None:
    # A big read during a handshake ends its device's turn without a must_wait before it: the queue is
    # still served on the next turn.
    loop, turns, served = setup()
    device = Device("flood", loop, served, 0.0)
    turns.wait(device)
    assert len(loop.ready) == 1
    loop.run_ready()
    assert served == ["flood"]


@pytest.mark.parametrize(("read_size", "per_turn"), [
    (None, 64),  # before any granted read: capped at GRANTS_MAX
    (200, 64),  # ordinary readings: capped at GRANTS_MAX
    (44 * 1024, 23),  # a full window of 20 readings of 2 KiB: 23 reads make 1 MiB
    (4 * 1024 * 1024, 8),  # floods: never fewer than GRANTS_MIN
])
def test_a_turn_grants_reads_worth_about_a_mebibyte(read_size: int | None, per_turn: int) -> None:
    # A hold let go of 3,000 devices: each turn grants as many of them a read as ~1 MiB holds at the size
    # granted reads have had lately, so a fleet held for seconds is not read all at once.
    loop, turns, served = setup()
    if read_size is not None:
        for _ in range(200):
            turns.granted(read_size)  # the estimate settles on the size reads have had
        loop.run_ready()
    assert turns.grants() == per_turn
    released = [Device(f"r{i}", loop, served, 0.0, aside=False) for i in range(3000)]
    for d in released:
        turns.wait(d)
    loop.run_ready()
    assert served == [d.name for d in released[:per_turn]]
    loop.run_ready()
    assert len(served) == min(3000, 2 * per_turn)


def test_grants_and_reads_set_aside_share_the_turn_in_arrival_order() -> None:
    loop, turns, served = setup()
    mixed = [Device(f"d{i}", loop, served, 0.005, aside=(i % 2 == 0)) for i in range(10)]
    for d in mixed:
        turns.wait(d)
    loop.run_ready()
    # d0, d2, d4, d6 cost 5 ms each (the budget is spent after d6); d1, d3, d5 were granted between them.
    assert served == [f"d{i}" for i in range(7)]


def test_a_granted_read_opens_the_turn_it_is_handled_in() -> None:
    loop, turns, _ = setup()
    turns.granted(100)
    assert len(loop.ready) == 1  # the turn's end is scheduled: the next turn's budget is fresh
    loop.now += 0.03
    assert turns.must_wait()  # the granted read spent this turn's budget
    loop.run_ready()
    assert not turns.must_wait()


def test_a_hold_stands_the_queue_still_and_nobody_loses_their_place() -> None:
    # The forward pacer held every device while 1,000 released ones still waited: none is served during the
    # hold, and after it the same order goes on, so the devices a hold catches waiting are not starved.
    loop, turns, served = setup()
    waiting = [Device(f"w{i}", loop, served, 0.0, aside=False) for i in range(1000)]
    for d in waiting:
        turns.wait(d)
    loop.run_ready()
    assert served == [f"w{i}" for i in range(turns.grants())]
    served.clear()
    turns.hold(True)
    for _ in range(5):
        loop.run_ready()
    assert served == []
    late = Device("late", loop, served, 0.0, aside=False)
    turns.wait(late)  # let go by the hold's end, after the ones that waited
    loop.run_ready()
    assert served == []
    turns.hold(False)
    while loop.ready:
        loop.run_ready()
    assert served == [f"w{i}" for i in range(turns.grants(), 1000)] + ["late"]


def test_the_estimate_rises_at_once_and_falls_slowly_and_scarce_memory_grants_the_fewest() -> None:
    _, turns, _ = setup()
    for _ in range(100):
        turns.granted(200)
    assert turns.grants() == 64
    turns.granted(512 * 1024)  # one read after a hold brought a whole window of big readings
    assert turns.grants() == 8
    turns.granted(200)
    assert turns.grants() == 8  # one small read does not undo it
    for _ in range(100):
        turns.granted(200)
    assert turns.grants() == 64
    turns.scarce = True  # the memory guard refuses connections
    assert turns.grants() == 8

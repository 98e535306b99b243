"""Forward pacing's decision (gateway.upstream.pacing.pace) as a table, and the pacer's bookkeeping."""

from __future__ import annotations

import logging

import pytest

from gateway.upstream.pacing import HIGH, HOLD_MAX, LAG, LOW, RELEASE_MIN, ForwardPacer, Pace, pace

IDLE = Pace()
HELD_AT_10 = Pace(True, 10.0)
RELEASED_AT_10 = Pace(False, 10.0)


@pytest.mark.parametrize(("why", "state", "now", "depth", "lag", "hub", "holding"), [
    ("behind, late loop, hub taking: hold", IDLE, 10.0, HIGH, LAG, True, True),
    ("the hub is down: the outbox is for that", IDLE, 10.0, HIGH * 10, 1.0, False, False),
    ("a slow uplink leaves the loop idle: buffer", IDLE, 10.0, HIGH * 10, 0.0, True, False),
    ("a late loop with a short outbox", IDLE, 10.0, HIGH - 1, 1.0, True, False),
    ("a loop just under the lag", IDLE, 10.0, HIGH, LAG * 0.99, True, False),
    ("too soon after the last hold", RELEASED_AT_10, 10.0 + RELEASE_MIN * 0.9, HIGH, 1.0, True, False),
    ("a release long enough", RELEASED_AT_10, 10.0 + RELEASE_MIN, HIGH, 1.0, True, True),
    ("held, still behind", HELD_AT_10, 10.5, LOW + 1, 0.0, True, True),
    ("held, caught up", HELD_AT_10, 10.5, LOW, 0.0, True, False),
    ("held, the hub went away", HELD_AT_10, 10.5, HIGH, 0.0, False, False),
    ("held for hold_max: devices get their turn", HELD_AT_10, 10.0 + HOLD_MAX, HIGH * 10, 1.0, True, False),
])
def test_pace(why: str, state: Pace, now: float, depth: int, lag: float, hub: bool, holding: bool) -> None:
    after = pace(state, now, depth=depth, lag=lag, hub_taking=hub)
    assert after.holding is holding, why
    assert after.since == (now if after.holding != state.holding else state.since), why


def test_devices_are_never_held_more_than_half_the_time_under_any_overload() -> None:
    state, held, now = Pace(), 0.0, 0.0
    while now < 600.0:
        state = pace(state, now, depth=10 * HIGH, lag=1.0, hub_taking=True)
        held += 0.1 if state.holding else 0.0
        now = round(now + 0.1, 1)
    assert 0.4 * 600 <= held <= 0.5 * 600 + 0.1


def test_the_pacer_tells_the_front_door_once_per_change_counts_holds_and_logs_once_a_minute(
        caplog: pytest.LogCaptureFixture) -> None:
    calls: list[bool] = []
    counted: list[int] = []
    depth = [HIGH]
    pacer = ForwardPacer(depth=lambda: depth[0], hub_taking=lambda: True,
                         hold=lambda on: calls.append(on) or 7, count=lambda: counted.append(1))
    with caplog.at_level(logging.WARNING, logger="edgegate.upstream"):
        pacer.step(0.0, 1.0)
        pacer.step(0.1, 0.0)  # still behind: no second call
        depth[0] = LOW
        pacer.step(0.2, 0.0)
        depth[0] = HIGH
        pacer.step(0.2 + RELEASE_MIN, 1.0)
    assert calls == [True, False, True]
    assert pacer.holds == len(counted) == 2
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1
    assert f"{HIGH} messages waiting" in lines[0]
    assert "reading 7 devices paused" in lines[0]

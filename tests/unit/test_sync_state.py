"""The hub state machine: every (state, outcome) pair, one announcement per change, the persisted status."""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from gateway.cache.records import SyncStatus
from gateway.hub.sync_state import TRANSITIONS, HubState, SyncOutcome, advance

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
S, ON, OFF, REJ = HubState.STARTING, HubState.ONLINE, HubState.OFFLINE, HubState.REJECTED
OK, DOWN, NO = SyncOutcome.SYNCED, SyncOutcome.UNAVAILABLE, SyncOutcome.REJECTED


@pytest.mark.parametrize(
    ("state", "outcome", "expected", "level"),
    [
        (S, OK, ON, logging.INFO),
        (S, DOWN, OFF, logging.WARNING),
        (S, NO, REJ, logging.ERROR),
        (ON, OK, ON, None),
        (ON, DOWN, OFF, logging.WARNING),
        (ON, NO, REJ, logging.ERROR),
        (OFF, OK, ON, logging.WARNING),
        (OFF, DOWN, OFF, None),
        (OFF, NO, REJ, logging.ERROR),
        (REJ, OK, ON, logging.WARNING),
        (REJ, DOWN, OFF, logging.WARNING),
        (REJ, NO, REJ, None),
    ],
)
def test_transition_table(state: HubState, outcome: SyncOutcome, expected: HubState, level: int | None) -> None:
    step = advance(state, SyncStatus(), outcome, T0, error=None if outcome is OK else "boom", cached_devices=7)
    assert step.state is expected
    if level is None:
        assert (step.announcement, step.level) == (None, logging.NOTSET)  # same state: said nothing
    else:
        assert step.level == level
        assert step.announcement is not None
        assert "7" in step.announcement  # how many devices are served meanwhile
        if outcome is not OK:
            assert "boom" in step.announcement


def test_the_table_is_complete() -> None:
    assert set(TRANSITIONS) == {(s, o) for s in HubState for o in SyncOutcome}
    assert all(target is not HubState.STARTING for target, _ in TRANSITIONS.values())


def test_a_sequence_of_outcomes_announces_each_change_once() -> None:
    state, status = S, SyncStatus()
    said = []
    outcomes = [DOWN, DOWN, DOWN, OK, OK, NO, NO, NO, DOWN, OK]
    for minute, outcome in enumerate(outcomes):
        step = advance(state, status, outcome, T0 + timedelta(minutes=minute), error=f"e{minute}")
        state, status = step.state, step.status
        if step.announcement:
            said.append((minute, step.state))
    assert said == [(0, OFF), (3, ON), (5, REJ), (8, OFF), (9, ON)]


def test_status_records_success_failure_and_since() -> None:
    step = advance(S, SyncStatus(), OK, T0, full_sync=True)
    assert step.status == SyncStatus(
        online=True, online_since=T0, last_success_at=T0, last_attempt_at=T0, last_full_sync_at=T0
    )
    t1 = T0 + timedelta(minutes=5)
    step = advance(ON, step.status, OK, t1)  # a delta: last success moves, the full sync does not
    assert (step.status.last_success_at, step.status.last_full_sync_at, step.status.online_since) == (t1, T0, T0)

    t2 = T0 + timedelta(minutes=10)
    down = advance(ON, step.status, DOWN, t2, error="refused")
    assert down.status.online is False
    assert (down.status.offline_since, down.status.last_error, down.status.last_success_at) == (t2, "refused", t1)
    t3 = t2 + timedelta(minutes=1)
    still = advance(OFF, down.status, NO, t3, error="401 thumbprint_mismatch")
    assert still.status.offline_since == t2  # offline -> rejected: still not online since t2
    assert still.status.last_error == "401 thumbprint_mismatch"

    t4 = t3 + timedelta(hours=1, minutes=2, seconds=3)
    back = advance(REJ, still.status, OK, t4)
    assert back.status.online_since == t4
    assert back.status.last_error is None
    assert back.announcement is not None
    assert "after 1h03m03s" in back.announcement


@pytest.mark.parametrize(
    ("persisted", "offline_since"),
    [
        (SyncStatus(online=False, offline_since=T0), T0),  # was offline when it stopped: keeps that
        (SyncStatus(online=True, online_since=T0, offline_since=T0 - timedelta(days=1)), T0 + timedelta(hours=1)),
        (SyncStatus(), T0 + timedelta(hours=1)),
    ],
)
def test_a_restart_while_offline_keeps_the_older_offline_since(persisted: SyncStatus, offline_since: datetime) -> None:
    step = advance(S, persisted, DOWN, T0 + timedelta(hours=1), error="refused")
    assert step.status.offline_since == offline_since


def test_advance_is_pure() -> None:
    status = replace(SyncStatus(), last_error="x")
    assert advance(ON, status, DOWN, T0, error="y") == advance(ON, status, DOWN, T0, error="y")
    assert status.last_error == "x"

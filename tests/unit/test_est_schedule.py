"""gateway.est.schedule: when to renew and how loudly to warn, table-tested with a fixed `now`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gateway.est.schedule import (
    RETRY_CEILING,
    RETRY_FLOOR,
    ExpiryLevel,
    describe_left,
    expiry_level,
    next_renewal,
    retry_step,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
D = timedelta(days=1)
S = timedelta(seconds=1)

# (name, lifetime, threshold, retry, now offset from not_before, expected offset from not_before)
RENEWAL = [
    ("before the threshold: at the threshold", 100 * D, 0.8, 0.04, 10 * D, 80 * D),
    ("exactly at the threshold: now", 100 * D, 0.8, 0.04, 80 * D, 80 * D),
    ("just after: the next retry step", 100 * D, 0.8, 0.04, 80 * D + S, 80 * D + timedelta(hours=1)),
    ("the step is capped at an hour", 100 * D, 0.8, 0.04, 81 * D + S, 81 * D + timedelta(hours=1)),
    ("short lifetimes: 4 % of 100 s", 100 * S, 0.8, 0.04, 81 * S, 84 * S),
    ("the step is at least a second", 10 * S, 0.8, 0.04, 8.5 * S, 9 * S),
    ("retries go on past expiry", 100 * S, 0.8, 0.04, 150 * S, 152 * S),
    ("threshold 50 %", 60 * S, 0.5, 0.05, 0 * S, 30 * S),
    ("on a retry moment: now", 100 * S, 0.8, 0.04, 88 * S, 88 * S),
    ("not yet valid: the threshold", 100 * S, 0.8, 0.04, -5 * S, 80 * S),
]


@pytest.mark.parametrize(("lifetime", "threshold", "retry", "now", "expected"),
                         [row[1:] for row in RENEWAL], ids=[row[0] for row in RENEWAL])
def test_next_renewal(lifetime: timedelta, threshold: float, retry: float, now: timedelta,
                      expected: timedelta) -> None:
    assert next_renewal(T0, T0 + lifetime, threshold, retry, T0 + now) == T0 + expected


def test_next_renewal_never_returns_the_past() -> None:
    for offset in range(0, 400):
        now = T0 + offset * S / 2
        assert next_renewal(T0, T0 + 100 * S, 0.8, 0.04, now) >= now


def test_retry_step_bounds() -> None:
    assert retry_step(T0, T0 + 10 * S, 0.01) == RETRY_FLOOR
    assert retry_step(T0, T0 + 3650 * D, 0.04) == RETRY_CEILING
    assert retry_step(T0, T0 + 10 * D, 0.004) == timedelta(seconds=3456)


LEVELS = [
    ("young", 30 * D, 1 * D, ExpiryLevel.OK),
    ("young but short-lived: no alarm", 1 * timedelta(hours=1), 10 * timedelta(minutes=1), ExpiryLevel.OK),
    ("past the threshold, weeks left", 100 * D, 81 * D, ExpiryLevel.RENEWAL_DUE),
    ("past the threshold, 7 days left", 30 * D, 24 * D + S, ExpiryLevel.EXPIRES_WITHIN_7_DAYS),
    ("past the threshold, a day left", 30 * D, 29 * D + S, ExpiryLevel.EXPIRES_WITHIN_1_DAY),
    ("expired", 30 * D, 30 * D, ExpiryLevel.EXPIRED),
    ("not yet valid", 30 * D, -S, ExpiryLevel.NOT_YET_VALID),
]


@pytest.mark.parametrize(("lifetime", "now", "level"), [row[1:] for row in LEVELS], ids=[row[0] for row in LEVELS])
def test_expiry_level(lifetime: timedelta, now: timedelta, level: ExpiryLevel) -> None:
    assert expiry_level(T0, T0 + lifetime, 0.8, T0 + now) is level


@pytest.mark.parametrize(("left", "text"), [
    (3 * D + timedelta(hours=4), "3d 4h left"), (42 * S, "42s left"), (-5 * timedelta(minutes=1), "expired 5m 0s ago"),
    (timedelta(hours=2, minutes=3), "2h 3m left"),
])
def test_describe_left(left: timedelta, text: str) -> None:
    assert describe_left(T0 + left, T0) == text

"""next_backoff: exponential from the base, capped, equal jitter (never below half the ceiling)."""

from __future__ import annotations

import pytest

from gateway.hub.backoff import BACKOFF_CAP, next_backoff


@pytest.mark.parametrize(
    ("attempt", "jitter", "expected"),
    [
        (0, 0.0, 0.5),
        (0, 1.0, 1.0),
        (1, 0.0, 1.0),
        (1, 0.5, 1.5),
        (2, 1.0, 4.0),
        (5, 0.0, 16.0),
        (5, 1.0, 32.0),
        (6, 0.0, 30.0),  # 64 s ceiling capped at 60
        (6, 1.0, 60.0),
        (40, 0.25, 37.5),
        (10_000, 1.0, 60.0),  # no overflow for absurd attempt counts
    ],
)
def test_backoff_table(attempt: int, jitter: float, expected: float) -> None:
    assert next_backoff(attempt, jitter) == pytest.approx(expected)


def test_backoff_grows_monotonically_to_the_cap_and_stays_there() -> None:
    waits = [next_backoff(n, 1.0) for n in range(12)]
    assert waits == sorted(waits)
    assert waits[-1] == BACKOFF_CAP
    assert all(next_backoff(n, 0.0) >= next_backoff(n, 1.0) / 2 for n in range(12))


def test_backoff_base_and_cap_are_parameters() -> None:
    assert next_backoff(0, 1.0, base=0.1, cap=0.4) == pytest.approx(0.1)
    assert next_backoff(3, 1.0, base=0.1, cap=0.4) == pytest.approx(0.4)


@pytest.mark.parametrize(("attempt", "jitter"), [(-1, 0.5), (0, -0.01), (0, 1.01)])
def test_backoff_rejects_nonsense(attempt: int, jitter: float) -> None:
    with pytest.raises(ValueError, match="must be"):
        next_backoff(attempt, jitter)

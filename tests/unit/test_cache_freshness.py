"""cache_usable: offline trust as a pure function of the last successful sync, now and the limit."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gateway.cache.freshness import cache_usable

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)


@pytest.mark.parametrize(
    ("last_success", "offline_trust", "usable"),
    [
        (None, None, True),  # trust forever: even a cache never confirmed (edgeHub's behaviour)
        (NOW - 365 * DAY, None, True),
        (None, DAY, False),  # a limit and no successful sync ever: not usable
        (NOW, DAY, True),
        (NOW - DAY, DAY, True),  # exactly at the limit
        (NOW - DAY - timedelta(microseconds=1), DAY, False),
        (NOW - 2 * DAY, DAY, False),
        (NOW - timedelta(seconds=59), timedelta(minutes=1), True),
        (NOW - timedelta(seconds=61), timedelta(minutes=1), False),
        (NOW + 30 * DAY, DAY, True),  # clock behind the last sync (Pi before NTP): age zero
        (NOW, timedelta(0), True),
        (NOW - timedelta(seconds=1), timedelta(0), False),
    ],
)
def test_cache_usable_table(last_success: datetime | None, offline_trust: timedelta | None, usable: bool) -> None:
    assert cache_usable(last_success, NOW, offline_trust) is usable

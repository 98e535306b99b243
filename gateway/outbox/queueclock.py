"""The queue clock: how long the gateway has been running with messages queued, immune to clock steps.

A message's age is `queue clock now - queue clock when it was committed`. The clock advances with the
monotonic clock while the gateway runs and resumes, after a restart, from the last reading written to
the outbox (every commit carries one, and an idle outbox with messages writes one every CLOCK_EVERY).
So a wall clock stepped 40 days forward (a Raspberry Pi without RTC meeting NTP) ages nothing, and
neither does the time the gateway was stopped: no clock can be trusted across a reboot without RTC,
and store-and-forward prefers sending an old message to dropping it on a guess.
"""

from __future__ import annotations

from dataclasses import dataclass

# How often an idle outbox that holds messages records the queue clock (the age a crash can lose).
CLOCK_EVERY = 60.0


@dataclass(frozen=True, slots=True)
class QueueClock:
    """Queue clock `base` at monotonic reading `anchor`; `now(monotonic)` reads it."""

    base: float
    anchor: float

    def now(self, monotonic: float) -> float:
        # A monotonic clock never goes back; max() keeps a misused one from ageing messages backwards.
        return self.base + max(0.0, monotonic - self.anchor)


def resumed(persisted: float, monotonic: float) -> QueueClock:
    """The queue clock after a start: where the last run left it, advancing from this moment."""
    return QueueClock(max(0.0, persisted), monotonic)


def is_expired(queued_at: float, queue_now: float, time_to_live: float | None) -> bool:
    """Has a message committed at queue-clock `queued_at` waited longer than `time_to_live` (None: forever)?"""
    return time_to_live is not None and queue_now - queued_at > time_to_live

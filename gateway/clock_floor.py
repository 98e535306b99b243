"""A clock you can trust before you act on it: is the system clock plausible, and what time to act on.

A Raspberry Pi has no battery-backed clock: it boots with a stale time until NTP answers. Certificates
issued on that time are wrong for every device whose clock is right. So the gateway keeps a floor
for "now", the newest of: this release's build date, the last time this gateway saw (persisted), the
newest notBefore of the certificates it holds; and, when the hub is online, the hub's Date header
settles it either way. Pure: every input is a value, `wall` included.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

# Nothing this release does can happen before it was built (bump with each release).
BUILD_DATE = datetime(2026, 11, 1, tzinfo=UTC)
# A wall clock that moves this much against the monotonic clock between two checks was stepped (NTP,
# an operator, a resumed VM), not drifted: certificates and trust are looked at again at once.
JUMP_THRESHOLD = timedelta(seconds=30)


class ClockState(enum.Enum):
    TRUSTED = "trusted"
    BEHIND = "behind"  # below the floor: never issue, replace or expire on it
    AHEAD = "ahead"  # ahead of the hub's Date: the same


@dataclass(frozen=True, slots=True)
class Evidence:
    """A time the real clock is known to have reached, and where that knowledge comes from."""

    at: datetime
    source: str  # "the last time seen", "the build date", "the newest certificate held (CN=...)"


@dataclass(frozen=True, slots=True)
class ClockVerdict:
    """What the clock check found. `now` is the time to act on: the wall clock when it is trusted,
    else the best evidence of the real time (the floor, or the hub's clock)."""

    state: ClockState
    wall: datetime
    now: datetime
    floor: datetime | None  # the newest local evidence (never from the hub), projected to this instant
    off_by: timedelta = timedelta(0)  # how far the wall clock is off, >= 0
    source: str = ""  # the evidence it is off against

    @property
    def trusted(self) -> bool:
        return self.state is ClockState.TRUSTED

    @property
    def sentence(self) -> str:
        """One line for the log, `status` and `check`."""
        if self.state is ClockState.TRUSTED:
            return "the system clock agrees with " + (self.source or "everything the gateway knows")
        way = "behind" if self.state is ClockState.BEHIND else "ahead of"
        return (f"the system clock is {human_span(self.off_by)} {way} {self.source}; NTP not synced? "
                "(certificates are neither issued nor renewed until it is right)")


def human_span(span: timedelta) -> str:
    """'40 days', '2 years', '3 hours', '12 minutes', '45 seconds'."""
    seconds = abs(span.total_seconds())
    for unit, size in (("year", 365 * 86400), ("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= 2 * size or (unit != "year" and seconds >= size):
            count = round(seconds / size)
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{int(seconds)} seconds"


def judge_clock(
    wall: datetime,
    *,
    build_date: datetime = BUILD_DATE,
    last_seen: datetime | None = None,
    newest_not_before: Evidence | None = None,
    hub_date: datetime | None = None,
    tolerance: timedelta = timedelta(minutes=5),
) -> ClockVerdict:
    """Judge `wall` against the evidence (each already projected to this instant by the caller).

    The hub's clock, when known, is the authority both ways: it also clears a last-seen time that a
    clock running ahead once wrote. Without it, only a clock *behind* the floor can be told.
    """
    evidence = [Evidence(build_date, "this release's build date")]
    if last_seen is not None:
        evidence.append(Evidence(last_seen, "the last time this gateway saw"))
    if newest_not_before is not None:
        evidence.append(newest_not_before)
    floor = max(evidence, key=lambda e: e.at)
    if hub_date is not None:
        off = wall - hub_date
        if off > tolerance:
            return ClockVerdict(ClockState.AHEAD, wall, hub_date, floor.at, off, "the hub's clock")
        if -off > tolerance:
            return ClockVerdict(ClockState.BEHIND, wall, hub_date, floor.at, -off, "the hub's clock")
        return ClockVerdict(ClockState.TRUSTED, wall, wall, floor.at, source="the hub's clock")
    if wall < floor.at - tolerance:
        return ClockVerdict(ClockState.BEHIND, wall, floor.at, floor.at, floor.at - wall, floor.source)
    return ClockVerdict(ClockState.TRUSTED, wall, wall, floor.at)


def projected(at: datetime, observed_monotonic: float, monotonic_now: float) -> datetime:
    """Evidence observed at `observed_monotonic` still holds later, by the time that has passed since."""
    return at + timedelta(seconds=max(0.0, monotonic_now - observed_monotonic))


def clock_jump(previous_offset: float, offset: float, threshold: timedelta = JUMP_THRESHOLD) -> timedelta | None:
    """How far the wall clock was stepped between two checks (offset = wall - monotonic, in seconds);
    None when it only drifted. Positive: forward."""
    step = offset - previous_offset
    return timedelta(seconds=step) if abs(step) >= threshold.total_seconds() else None


def issue_not_before(verdict: ClockVerdict, backdate: timedelta) -> datetime:
    """The notBefore of a certificate issued now: never later than the floor, so a wall clock running
    ahead (which only the hub can tell) still yields certificates valid for devices whose clock is right."""
    earliest = min(verdict.wall, verdict.now, verdict.floor or verdict.now)
    return earliest - backdate

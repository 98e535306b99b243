"""The clock floor's I/O: the persisted "last time seen", the hub's Date header, a periodic clock check
that notices a clock being stepped (NTP at last) and tells whoever must look again. The judging is
gateway.clock_floor's.

    watch = ClockWatch(state_dir, tolerance=timedelta(minutes=5))
    watch.hold(certs)              # the certificates the gateway holds are evidence too
    watch.now()                    # the time to act on (what every decision gets)
    watch.on_change(callback)      # called when the verdict changes or the clock jumps
    await watch.run()              # checks every CHECK_EVERY s; persists last-seen while trusted
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509

from gateway.clock_floor import (
    BUILD_DATE,
    ClockState,
    ClockVerdict,
    Evidence,
    clock_jump,
    human_span,
    judge_clock,
    projected,
)
from gateway.pki import write_file_atomic

log = logging.getLogger("edgegate.clock")

LAST_SEEN_FILE = "clock.json"
# Seconds between clock checks: a corrected clock is noticed (and certificates re-checked) within this.
CHECK_EVERY = 10.0
# Seconds between writes of the last time seen: at most this much of a run is lost to a power cut.
PERSIST_EVERY = 60.0
# `now()` runs for every decision and `epoch()` for every message: while the last verdict was "trusted"
# and the wall clock has not moved against the monotonic clock by more than this, the wall clock is the
# answer (judging afresh costs ~30 µs here; this path costs ~1 µs).
FAST_PATH_SLACK = 1.0
# The clock is judged with at least this tolerance whatever clock_skew_tolerance says: the hub's Date
# header has whole seconds and arrives after a network round trip, and a verdict that flapped with
# them would flap the renewal hold too.
MIN_TOLERANCE = timedelta(seconds=60)


def _utcnow() -> datetime:
    return datetime.now(UTC)


def read_last_seen(path: Path) -> datetime | None:
    """The persisted last time seen; None when absent or unreadable (a fresh state directory)."""
    try:
        value = json.loads(path.read_text())["last_seen"]
        seen = datetime.fromisoformat(value)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return seen if seen.tzinfo is not None else seen.replace(tzinfo=UTC)


def write_last_seen(path: Path, seen: datetime) -> None:
    write_file_atomic(path, json.dumps({"last_seen": seen.isoformat()}).encode())


Callback = Callable[[ClockVerdict, timedelta | None], object]


def judge_offline(state_dir: Path, held: Iterable[x509.Certificate], now: datetime,
                  tolerance: timedelta) -> ClockVerdict:
    """The clock verdict without a running gateway (for `edgegate check` and `status`): the persisted
    last time seen and the certificates on disk are the evidence."""
    newest: Evidence | None = None
    for cert in held:
        if newest is None or cert.not_valid_before_utc > newest.at:
            newest = Evidence(cert.not_valid_before_utc,
                              f"the newest certificate held ({cert.subject.rfc4514_string()})")
    return judge_clock(now, last_seen=read_last_seen(state_dir / LAST_SEEN_FILE), newest_not_before=newest,
                       tolerance=max(tolerance, MIN_TOLERANCE))


class ClockWatch:
    def __init__(
        self,
        state_dir: Path,
        *,
        tolerance: timedelta,
        wall: Callable[[], datetime] = _utcnow,
        monotonic: Callable[[], float] = time.monotonic,
        build_date: datetime = BUILD_DATE,
        wall_epoch: Callable[[], float] | None = None,
    ) -> None:
        """`wall_epoch`: `wall` as seconds since the epoch, when there is a cheaper way (time.time)."""
        self.path = state_dir / LAST_SEEN_FILE
        self.wall, self.monotonic, self.build_date = wall, monotonic, build_date
        self.tolerance = max(tolerance, MIN_TOLERANCE)
        if wall_epoch is None:
            wall_epoch = time.time if wall is _utcnow else lambda: wall().timestamp()
        self._wall_epoch = wall_epoch
        self._trusted_offset: float | None = None  # wall - monotonic when last judged trusted
        self._booted = monotonic()
        self._last_seen = read_last_seen(self.path)
        self._newest: Evidence | None = None
        self._hub: tuple[datetime, float] | None = None
        self._callbacks: list[Callback] = []
        self._offset = self._wall_offset()
        self._persisted_at: float | None = None
        self.verdict = self._judge()
        self._announced: ClockState = ClockState.TRUSTED
        self._announce(self.verdict, None)

    # -- evidence ------------------------------------------------------------------------------------

    def hold(self, certs: Iterable[x509.Certificate]) -> None:
        """Certificates the gateway holds: the real time is past the newest notBefore among them."""
        for cert in certs:
            if self._newest is None or cert.not_valid_before_utc > self._newest.at:
                subject = cert.subject.rfc4514_string()
                self._newest = Evidence(cert.not_valid_before_utc, f"the newest certificate held ({subject})")
        self._judge()

    def hub_date(self, date: datetime) -> None:
        """The hub's Date header, received just now."""
        self._hub = (date, self.monotonic())
        self._judge()

    def on_change(self, callback: Callback) -> None:
        """`callback(verdict, jump)` when the verdict's state changes or the wall clock is stepped."""
        self._callbacks.append(callback)

    # -- judging -------------------------------------------------------------------------------------

    def check(self) -> ClockVerdict:
        """Judge the clock at this instant."""
        mono = self.monotonic()
        last_seen = projected(self._last_seen, self._booted, mono) if self._last_seen is not None else None
        hub = projected(self._hub[0], self._hub[1], mono) if self._hub is not None else None
        return judge_clock(self.wall(), build_date=self.build_date, last_seen=last_seen,
                           newest_not_before=self._newest, hub_date=hub, tolerance=self.tolerance)

    def _judge(self) -> ClockVerdict:
        """`check()`, remembering whether the wall clock may be used as it is until it is stepped."""
        verdict = self.check()
        self._trusted_offset = verdict.wall.timestamp() - self.monotonic() if verdict.trusted else None
        return verdict

    def _unmoved(self, wall_epoch: float) -> bool:
        trusted = self._trusted_offset
        return trusted is not None and abs(wall_epoch - self.monotonic() - trusted) < FAST_PATH_SLACK

    def now(self) -> datetime:
        """The time to act on."""
        wall = self.wall()
        if self._unmoved(wall.timestamp()):
            return wall
        return self._judge().now

    def epoch(self) -> float:
        """`now()` in seconds since the epoch (for the outbox's stamps and its time-to-live)."""
        wall = self._wall_epoch()
        if self._unmoved(wall):
            return wall
        return self._judge().now.timestamp()

    def trusted(self) -> bool:
        return self.verdict.trusted

    def describe(self) -> dict[str, object]:
        """For status.json."""
        v = self.verdict
        return {"state": v.state.value, "wall": v.wall.isoformat(), "acting_on": v.now.isoformat(),
                "off_by_seconds": int(v.off_by.total_seconds()), "message": v.sentence}

    # -- the periodic check --------------------------------------------------------------------------

    def tick(self) -> ClockVerdict:
        """One clock check: notice a step, re-judge, tell the callbacks, persist the time while trusted."""
        offset = self._wall_offset()
        jump = clock_jump(self._offset, offset)
        self._offset = offset
        verdict = self._judge()
        changed = verdict.state is not self.verdict.state
        self.verdict = verdict
        if jump is not None:
            way = "forward" if jump > timedelta(0) else "back"
            log.warning("the system clock was stepped %s by %s; re-checking certificates", way, human_span(jump))
        self._announce(verdict, jump)
        if changed or jump is not None:
            for callback in self._callbacks:
                try:
                    callback(verdict, jump)
                except Exception:
                    log.exception("a clock change callback failed")
        mono = self.monotonic()
        if verdict.trusted and (self._persisted_at is None or mono - self._persisted_at >= PERSIST_EVERY):
            self.persist()
        return verdict

    def persist(self) -> None:
        """Write the last time seen (only ever from a trusted clock)."""
        if not self.verdict.trusted:
            return
        try:
            write_last_seen(self.path, self.verdict.wall)
            self._persisted_at = self.monotonic()
        except OSError as exc:
            log.warning("cannot save the last time seen to %s: %s", self.path, exc.strerror)

    async def run(self, every: float = CHECK_EVERY) -> None:
        while True:
            await asyncio.sleep(every)
            self.tick()

    def _wall_offset(self) -> float:
        return self.wall().timestamp() - self.monotonic()

    def _announce(self, verdict: ClockVerdict, jump: timedelta | None) -> None:
        # Said once per change of state, not at every check.
        if verdict.state is self._announced:
            return
        if verdict.trusted:
            log.warning("the system clock is trusted again (%s); certificates may be issued and renewed",
                        verdict.sentence)
        else:
            log.warning("%s; keeping the certificates held and serving with them", verdict.sentence)
        self._announced = verdict.state

"""Live sessions follow their certificates: a periodic sweep closes sessions whose certificate expired,
and a CA change closes the sessions that relied on a removed CA. The decisions are gateway.auth.live's;
this module only asks for the sessions, kicks, logs and counts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta

from gateway.auth.live import LiveSession, SessionEnd, anchor_lost_sessions, expired_sessions
from gateway.cache.records import RegisteredCA
from gateway.metrics import Counters
from gateway.records import TrustAnchors

log = logging.getLogger("edgegate.sessions")

# Seconds between sweeps. A session outlives its certificate by at most the skew plus this (the promise
# is skew + 5 s); each sweep compares one cached deadline per session (10,000 sessions: ~7 ms here).
SWEEP_EVERY = 2.5

ListSessions = Callable[[], Iterable[LiveSession]]
Kick = Callable[[str, str], bool]


class SessionSweep:
    """Closes sessions whose chain expired (every SWEEP_EVERY s) or lost its CA (on `anchors_changed`)."""

    def __init__(self, list_sessions: ListSessions, kick: Kick, *, clock: Callable[[], datetime],
                 skew: timedelta, counters: Counters, every: float = SWEEP_EVERY) -> None:
        self.list_sessions, self.kick, self.clock = list_sessions, kick, clock
        self.skew, self.counters, self.every = skew, counters, every
        self._tasks: set[asyncio.Task[list[SessionEnd]]] = set()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            try:
                self.sweep()
            except Exception:
                log.exception("the session sweep failed; trying again in %gs", self.every)

    def sweep(self) -> list[SessionEnd]:
        """Close every session past its deadline; returns the sessions closed."""
        return self._close(expired_sessions(self.list_sessions(), self.clock(), self.skew))

    def anchors_changed(self, old: TrustAnchors, new: TrustAnchors, removed: tuple[RegisteredCA, ...]) -> None:
        """A directory callback: close the sessions whose chain reached a CA that is gone. The chains are
        checked on a worker thread (thousands of verifications must not stall the event loop)."""
        task = asyncio.get_running_loop().create_task(self.close_orphans(old, new))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close_orphans(self, old: TrustAnchors, new: TrustAnchors) -> list[SessionEnd]:
        checked = dict(self.list_sessions())
        ends = await asyncio.to_thread(anchor_lost_sessions, list(checked.items()), old, new, self.clock())
        # A device that reconnected while its chains were checked holds a new session: leave that alone.
        current = dict(self.list_sessions())
        return self._close([e for e in ends if current.get(e.device_id) is checked[e.device_id]])

    def _close(self, ends: list[SessionEnd]) -> list[SessionEnd]:
        closed = []
        for end in ends:
            if self.kick(end.device_id, end.message):
                self.counters.inc("edgegate_sessions_closed_total", reason=end.code)
                log.warning("session closed device=%s thumbprint=%s reason=%s: %s",
                            end.device_id, end.thumbprint or "-", end.code, end.message)
                closed.append(end)
        return closed

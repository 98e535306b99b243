"""Whether the hub answered lately, as the twin and method paths see it (shared by them)."""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger("edgegate.twin")

# Twin and method calls retry the hub at most this far apart: a reported patch should reach the hub
# soon after it returns, and each retry is one small request (the registry sync waits up to 60 s).
RETRY_CAP = 10.0


class HubHealth:
    """`up` until a call fails; up again after the next call that works. `since`: when that changed."""

    def __init__(self, now: float) -> None:
        self.up = True
        self.since = now
        self.why = ""
        self._back = asyncio.Event()
        self._back.set()

    def failed(self, why: str, now: float) -> None:
        if self.up:
            log.warning("hub unreachable for twins and methods: %s; twin GETs are answered from the cache, "
                        "reported patches are queued", why)
            self.up, self.since = False, now
        self.why = why
        self._back.clear()

    def worked(self, now: float) -> None:
        if not self.up:
            log.info("hub reachable again for twins and methods")
            self.up, self.since, self.why = True, now, ""
        self._back.set()

    async def wait_back(self, seconds: float) -> None:
        """Sleep `seconds`, or less if another caller finds the hub working meanwhile."""
        try:
            async with asyncio.timeout(seconds):
                await self._back.wait()
        except TimeoutError:
            return

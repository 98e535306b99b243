"""Whether the hub answered lately, as the twin and method paths see it (shared by them)."""

from __future__ import annotations

import logging

log = logging.getLogger("edgegate.twin")


class HubHealth:
    """`up` until a call fails; up again after the next call that works. `since`: when that changed."""

    def __init__(self, now: float) -> None:
        self.up = True
        self.since = now
        self.why = ""

    def failed(self, why: str, now: float) -> None:
        if self.up:
            log.warning("hub unreachable for twins and methods: %s; twin GETs are answered from the cache, "
                        "reported patches are queued", why)
            self.up, self.since = False, now
        self.why = why

    def worked(self, now: float) -> None:
        if not self.up:
            log.info("hub reachable again for twins and methods")
            self.up, self.since, self.why = True, now, ""

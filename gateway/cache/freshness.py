"""Offline trust: how old a cache the gateway may still authenticate devices against."""

from __future__ import annotations

from datetime import datetime, timedelta


def cache_usable(last_success: datetime | None, now: datetime, offline_trust: timedelta | None) -> bool:
    """True if devices may be authenticated from a cache last confirmed by the hub at `last_success`.

    `offline_trust` None trusts the cache forever (edgeHub's behaviour). A cache never confirmed is not
    usable under a limit. A clock behind `last_success` (a Raspberry Pi before NTP) counts as age zero:
    a wrong clock must not lock every device out.
    """
    if offline_trust is None:
        return True
    if last_success is None:
        return False
    return now - last_success <= offline_trust

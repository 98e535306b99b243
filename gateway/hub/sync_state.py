"""The hub connection's life cycle as a table: which state a sync outcome leads to, and what to say.

    STARTING  serving the persisted cache; the hub not reached yet in this run
    ONLINE    the last sync request succeeded
    OFFLINE   the hub is unreachable or untrustworthy; the cache is served as it is
    REJECTED  the hub refused this gateway's identity; the cache is served as it is, loudly

Pure: the caller passes `now` and logs the announcement, which exists only when the state changes.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, replace
from datetime import datetime

from gateway.cache.records import SyncStatus


class HubState(enum.Enum):
    STARTING = "starting"
    ONLINE = "online"
    OFFLINE = "offline"
    REJECTED = "rejected"


class SyncOutcome(enum.Enum):
    SYNCED = "synced"  # the hub answered
    UNAVAILABLE = "unavailable"  # HubUnavailable
    REJECTED = "rejected"  # HubRejected


# (state, outcome) -> (next state, log level of the announcement). Same state: nothing to announce.
TRANSITIONS: dict[tuple[HubState, SyncOutcome], tuple[HubState, int]] = {
    (HubState.STARTING, SyncOutcome.SYNCED): (HubState.ONLINE, logging.INFO),
    (HubState.STARTING, SyncOutcome.UNAVAILABLE): (HubState.OFFLINE, logging.WARNING),
    (HubState.STARTING, SyncOutcome.REJECTED): (HubState.REJECTED, logging.ERROR),
    (HubState.ONLINE, SyncOutcome.SYNCED): (HubState.ONLINE, logging.NOTSET),
    (HubState.ONLINE, SyncOutcome.UNAVAILABLE): (HubState.OFFLINE, logging.WARNING),
    (HubState.ONLINE, SyncOutcome.REJECTED): (HubState.REJECTED, logging.ERROR),
    (HubState.OFFLINE, SyncOutcome.SYNCED): (HubState.ONLINE, logging.WARNING),
    (HubState.OFFLINE, SyncOutcome.UNAVAILABLE): (HubState.OFFLINE, logging.NOTSET),
    (HubState.OFFLINE, SyncOutcome.REJECTED): (HubState.REJECTED, logging.ERROR),
    (HubState.REJECTED, SyncOutcome.SYNCED): (HubState.ONLINE, logging.WARNING),
    (HubState.REJECTED, SyncOutcome.UNAVAILABLE): (HubState.OFFLINE, logging.WARNING),
    (HubState.REJECTED, SyncOutcome.REJECTED): (HubState.REJECTED, logging.NOTSET),
}


@dataclass(frozen=True, slots=True)
class Step:
    """The result of one sync outcome: the new state and status, and the announcement if any."""

    state: HubState
    status: SyncStatus
    level: int  # logging level of the announcement; NOTSET: say nothing
    announcement: str | None


def _ago(since: datetime | None, now: datetime) -> str:
    if since is None:
        return ""
    seconds = max(0, int((now - since).total_seconds()))
    return f" after {seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"


def advance(
    state: HubState,
    status: SyncStatus,
    outcome: SyncOutcome,
    now: datetime,
    *,
    error: str | None = None,
    full_sync: bool = False,
    cached_devices: int = 0,
) -> Step:
    """Where `outcome` (of an attempt that started at `now`) leads, and the status to persist."""
    new_state, level = TRANSITIONS[(state, outcome)]
    online = new_state is HubState.ONLINE
    changed = new_state is not state
    online_since, offline_since = status.online_since, status.offline_since
    if changed and online:
        online_since = now
    elif changed and state is HubState.ONLINE:
        offline_since = now
    elif changed and state is HubState.STARTING and (status.online or offline_since is None):
        # A gateway restarted while offline keeps the older "offline since" of its persisted status.
        offline_since = now
    status = replace(
        status,
        online=online,
        online_since=online_since,
        offline_since=offline_since,
        last_attempt_at=now,
        last_error=None if online else error,
        last_success_at=now if online else status.last_success_at,
        last_full_sync_at=now if online and full_sync else status.last_full_sync_at,
    )
    if not changed:
        return Step(new_state, status, logging.NOTSET, None)
    if new_state is HubState.ONLINE:
        text = "hub online" + _ago(status.offline_since, now) + f"; {cached_devices} devices in the cache"
    elif new_state is HubState.OFFLINE:
        text = f"hub offline, serving {cached_devices} cached devices: {error}"
    else:
        text = (f"the hub REFUSED this gateway's identity; serving {cached_devices} cached devices "
                f"until it is fixed: {error}")
    return Step(new_state, status, level, text)

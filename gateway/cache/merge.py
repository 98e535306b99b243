"""How what the hub says merges into what the cache holds: pure functions over records."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from gateway.records import DeviceRecord


def diff_snapshot(
    current: Mapping[str, DeviceRecord], snapshot: Iterable[DeviceRecord]
) -> tuple[list[DeviceRecord], list[str]]:
    """(records that are new or differ, ids no longer in the snapshot) to turn `current` into `snapshot`."""
    upserts: list[DeviceRecord] = []
    seen: set[str] = set()
    for record in snapshot:
        seen.add(record.device_id)
        if current.get(record.device_id) != record:
            upserts.append(record)
    deletes = [device_id for device_id in current if device_id not in seen]
    return upserts, deletes


def accept_fetched(fetched: DeviceRecord, current: DeviceRecord | None, cursor: int | None) -> bool:
    """May a record fetched on a cache miss enter the cache?

    The fetch races with the change feed. A record the cache already holds at the same or a newer
    generation wins. A missing record whose generation is not past the cursor was read before a change
    the feed has already applied (it was removed or moved since): stale.
    """
    if current is not None:
        return fetched.generation > current.generation
    return cursor is None or fetched.generation > cursor

"""Free disk space, as pure decisions over numbers from statvfs (read at the edge, `disk_space`).

The outbox refuses a new message (no PUBACK; the device keeps it) once accepting it would leave less
than the reserve free on the state directory's file system. The reserve is what removals (REMOVED
records), dead letters, the device cache and SQLite's checkpoints need to keep working on a full disk;
without it a full disk wedges the gateway for good (issue 13: every DELETE failed, nothing drained).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

MIB = 1024 * 1024
# The configured reserve is capped at this fraction of a small file system, or an 8 MiB state
# partition would refuse everything; but never under MIN_RESERVE, which a hub outage's removals fit.
RESERVE_FRACTION = 8
MIN_RESERVE = 1 * MIB
# Segments are at most this big (deleting one is how space comes back), and at most this fraction of
# the file system, so that a small one frees space in steps.
SEGMENT_BYTES = 8 * MIB
SEGMENT_FRACTION = 32
MIN_SEGMENT_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class DiskSpace:
    total: int  # bytes of the file system
    free: int  # bytes an unprivileged writer may still use (f_bavail)


def disk_space(path: Path) -> DiskSpace:
    """statvfs of the file system holding `path` (OSError passes through)."""
    st = os.statvfs(path)
    return DiskSpace(st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize)


def effective_reserve(configured: int, total: int) -> int:
    """The free bytes kept back from new messages on a file system of `total` bytes."""
    return max(MIN_RESERVE, min(configured, total // RESERVE_FRACTION))


def segment_size(total: int) -> int:
    """How big one segment file grows before the next one starts."""
    return max(MIN_SEGMENT_BYTES, min(SEGMENT_BYTES, total // SEGMENT_FRACTION))


def space_refusal(space: DiskSpace, reserve: int, unwritten: int, payload: int) -> str | None:
    """Why one more message of `payload` bytes must be refused, or None. `unwritten` is what is queued
    for the disk already but not yet written (it will take its share of the free space)."""
    left = space.free - unwritten - payload
    if left < reserve:
        return (f"the state directory's file system has {space.free} bytes free ({unwritten} more queued to "
                f"write); the outbox keeps {reserve} free for deliveries and removals")
    return None

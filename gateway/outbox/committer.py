"""Group commit, shared fairly between devices.

`FairQueue` holds what devices submitted and not yet committed, one FIFO per device. An item is what
a device submitted at once (the PUBLISHes of one socket read: `count` messages). `take` builds the next
commit round-robin: one item from every device that has any, then a second from each, and so on up to
`max_batch` messages -- but never fewer than one item from each waiting device. So a device that
floods cannot push another device's message past the next commit: it waits at most one commit,
whatever the flood (issue 13: a QoS 0 flood held other devices' PUBACKs for over 10 s); the front
door's per-connection byte budget bounds how big one item can be. Within one device the order is
kept. The structure is plain data (no asyncio, no clock): store.py drives it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")

# Messages per commit once every waiting device has one in it. A commit costs one fdatasync whatever
# its size; the cap keeps one write (and the memory it needs) small on a Pi.
MAX_BATCH = 1024
# ... and payload bytes per commit, likewise. A device that is never alone in a commit waits for the one
# being written before its own: under a flood of 2 KiB messages 1,024 of them made a 2 MiB write, and
# the fleet's PUBACK p99 rose with it (bench.flood: 130-180 ms); 256 KiB is still hundreds of the
# 100-byte readings of a fleet.
MAX_BATCH_BYTES = 256 * 1024


def worth_lingering(waiting: Iterable[str], last_commit: Collection[str]) -> bool:
    """Would waiting for others to share this commit gather anyone? Not when every device now waiting
    was in the last commit: they publish as fast as their PUBACKs come back, in step with our commits,
    and a linger would only hold each of them back by the whole commit_interval, window after window
    (bench.hotpath --publishers 10: one second of 30 ms lingers that gathered nobody, in a run of four).
    A fleet's trickle brings devices the last commit did not have: for them it lingers."""
    return any(device_id not in last_commit for device_id in waiting)


# After a linger that gathered nothing, this many commits (doubling with each fruitless linger in a row)
# are written without one; the first linger that gathers a message ends the back-off.
LINGER_SKIP_MAX = 32


@dataclass(slots=True)
class LingerPolicy:
    """Whether the writer waits for others to share this commit: `worth_lingering`, and then only while
    lingering has been gathering anything.

    A linger that gathers nobody only delays the devices waiting. Devices that each wait for their PUBACK
    before they send again, taking turns (two sensors polled in turn; a site's few devices reporting
    back to back), were never in the commit before their own, so `worth_lingering` alone made every one of
    their messages wait the whole commit_interval: two of them alternating got about 33 messages a second
    through between them, at one fdatasync a message anyway. A fleet's trickle keeps every linger
    fruitful and is unchanged. Plain state, no clock: store.py calls `decide` before each commit and
    `lingered` after each linger it waited out.
    """

    skip: int = 0  # commits left to write without lingering
    fruitless: int = 0  # lingers in a row that gathered nothing
    lingers: int = 0  # lingers waited out in all (status.json), and of those the ones that gathered nothing
    lingers_fruitless: int = 0

    def decide(self, waiting: Iterable[str], last_commit: Collection[str]) -> bool:
        """Linger before this commit? (A commit that skips its linger uses up one skip.)"""
        if not worth_lingering(waiting, last_commit):
            return False
        if self.skip:
            self.skip -= 1
            return False
        return True

    def lingered(self, gathered: int) -> None:
        """A linger was waited out and `gathered` messages arrived during it."""
        self.lingers += 1
        if gathered > 0:
            self.fruitless = self.skip = 0
        else:
            self.lingers_fruitless += 1
            self.fruitless += 1
            self.skip = min(2 ** (self.fruitless - 1), LINGER_SKIP_MAX)


@dataclass(slots=True)
class _Lane(Generic[T]):
    items: deque[tuple[T, int, int]] = field(default_factory=deque)  # (item, payload bytes, messages)
    bytes: int = 0
    count: int = 0


class FairQueue(Generic[T]):
    """Per-device FIFOs; `take` drains them round-robin. Counts bytes per device for the front door."""

    def __init__(self) -> None:
        self._lanes: dict[str, _Lane[T]] = {}
        self.count = 0
        self.bytes = 0

    def __len__(self) -> int:
        return self.count

    def put(self, device_id: str, item: T, size: int, count: int = 1) -> None:
        """Queue `item`: `count` messages of `size` payload bytes in all."""
        lane = self._lanes.get(device_id)
        if lane is None:
            lane = self._lanes[device_id] = _Lane()
        lane.items.append((item, size, count))
        lane.bytes += size
        lane.count += count
        self.count += count
        self.bytes += size

    def pending_count(self, device_id: str) -> int:
        """Messages `device_id` has waiting for a commit."""
        lane = self._lanes.get(device_id)
        return lane.count if lane is not None else 0

    def pending_bytes(self, device_id: str) -> int:
        """Payload bytes `device_id` has waiting for a commit."""
        lane = self._lanes.get(device_id)
        return lane.bytes if lane is not None else 0

    def devices(self) -> Iterator[str]:
        return iter(self._lanes)

    def take(self, max_batch: int, max_bytes: int = MAX_BATCH_BYTES) -> list[T]:
        """The next commit's items: round-robin over devices, one item from every waiting device
        whatever the caps, then more, round by round, until `max_batch` messages or `max_bytes` payload
        bytes are taken."""
        out: list[T] = []
        taken = taken_bytes = 0
        lanes = self._lanes
        first_round = True
        while lanes and (first_round or (taken < max_batch and taken_bytes < max_bytes)):
            for device_id in list(lanes):
                if not first_round and (taken >= max_batch or taken_bytes >= max_bytes):
                    break
                lane = lanes[device_id]
                item, size, count = lane.items.popleft()
                lane.bytes -= size
                lane.count -= count
                self.count -= count
                self.bytes -= size
                taken += count
                taken_bytes += size
                out.append(item)
                if not lane.items:
                    del lanes[device_id]
            first_round = False
        return out

    def drain(self) -> list[T]:
        """Everything, device by device (for failing what can no longer be committed)."""
        return self.take(max(self.count, 1), max(self.bytes, 1))

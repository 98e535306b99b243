"""Group commit, shared fairly between devices.

`FairQueue` holds what devices submitted and not yet committed, one FIFO per device. `take` builds
the next commit round-robin: one message from every device that has any, then a second from each,
and so on up to `max_batch` -- but never fewer than one from each waiting device. So a device that
floods cannot push another device's message past the next commit: it waits at most one commit,
whatever the flood (issue 13: a QoS 0 flood held other devices' PUBACKs for over 10 s). Within one
device the order is kept. The structure is plain data (no asyncio, no clock): store.py drives it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")

# Messages per commit once every waiting device has one in it. A commit costs one fdatasync whatever
# its size; the cap keeps one write (and the memory it needs) small on a Pi.
MAX_BATCH = 1024


@dataclass(slots=True)
class _Lane(Generic[T]):
    items: deque[tuple[T, int]] = field(default_factory=deque)
    bytes: int = 0


class FairQueue(Generic[T]):
    """Per-device FIFOs; `take` drains them round-robin. Counts bytes per device for the front door."""

    def __init__(self) -> None:
        self._lanes: dict[str, _Lane[T]] = {}
        self.count = 0
        self.bytes = 0

    def __len__(self) -> int:
        return self.count

    def put(self, device_id: str, item: T, size: int) -> None:
        lane = self._lanes.get(device_id)
        if lane is None:
            lane = self._lanes[device_id] = _Lane()
        lane.items.append((item, size))
        lane.bytes += size
        self.count += 1
        self.bytes += size

    def pending_count(self, device_id: str) -> int:
        """Messages `device_id` has waiting for a commit."""
        lane = self._lanes.get(device_id)
        return len(lane.items) if lane is not None else 0

    def pending_bytes(self, device_id: str) -> int:
        """Payload bytes `device_id` has waiting for a commit."""
        lane = self._lanes.get(device_id)
        return lane.bytes if lane is not None else 0

    def devices(self) -> Iterator[str]:
        return iter(self._lanes)

    def take(self, max_batch: int) -> list[T]:
        """The next commit's items: round-robin over devices, at least one from each, at most
        max(max_batch, number of waiting devices)."""
        out: list[T] = []
        budget = max(max_batch, len(self._lanes))
        while self._lanes and len(out) < budget:
            for device_id in list(self._lanes):
                lane = self._lanes[device_id]
                item, size = lane.items.popleft()
                lane.bytes -= size
                self.count -= 1
                self.bytes -= size
                out.append(item)
                if not lane.items:
                    del self._lanes[device_id]
                if len(out) >= budget:
                    break
        return out

    def drain(self) -> list[T]:
        """Everything, device by device (for failing what can no longer be committed)."""
        return self.take(self.count)

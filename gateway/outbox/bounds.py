"""The outbox's bounds, as a pure decision over in-memory counts.

Policy when full: refuse the *new* message, never evict an acknowledged one. `Outbox.submit` raises
`OutboxFull` synchronously; a QoS 1 publisher gets no PUBACK and keeps the message (the front door
disconnects it to push back), a QoS 0 message is dropped by the front door and counted there. Each
refusal is counted by the bound that refused it. Expired messages (time-to-live) and dead letters are
the only ones that leave without reaching the hub, and they are counted too.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

# Payload bytes waiting in memory for a commit, for all devices together: past it every new message is
# refused until the disk catches up. A commit takes at most MAX_BATCH messages every commit_interval,
# so only a stalled disk gets here; it bounds the outbox's share of RSS (docs/CONFIG.md).
MAX_PENDING_BYTES = 32 * 1024 * 1024
# ... and for one device's QoS 0 messages, which nobody waits for: past it they are dropped (counted),
# so a QoS 0 flood cannot grow memory even before the front door stops reading its socket.
MAX_PENDING_QOS0_BYTES_PER_DEVICE = 1024 * 1024


class Bound(StrEnum):
    """Which limit refused a message (the counter label and the log reason)."""

    MAX_MESSAGES = "max_messages"
    MAX_BYTES = "max_bytes"
    PER_DEVICE_MAX_MESSAGES = "per_device_max_messages"
    DISK_SPACE = "disk_space"
    PENDING_BYTES = "pending_bytes"
    DISK_FAILED = "disk_failed"


@dataclass(frozen=True, slots=True)
class OutboxLimits:
    time_to_live: float | None = None  # seconds queued before a message expires; None: never (README)
    max_messages: int = 1_000_000
    max_bytes: int = 1024**3  # payload bytes
    per_device_max_messages: int = 100_000  # one chatty device cannot fill the outbox for all others


@dataclass(frozen=True, slots=True)
class Refusal:
    bound: Bound
    message: str


def refusal(limits: OutboxLimits, messages: int, size: int, device_messages: int, payload: int) -> Refusal | None:
    """Why one more message of `payload` bytes does not fit next to the current counts, or None if it does."""
    if messages + 1 > limits.max_messages:
        return Refusal(Bound.MAX_MESSAGES, f"outbox holds {messages} messages (max_messages {limits.max_messages})")
    if size + payload > limits.max_bytes:
        return Refusal(Bound.MAX_BYTES,
                       f"outbox holds {size} payload bytes, {payload} more would pass max_bytes {limits.max_bytes}")
    if device_messages + 1 > limits.per_device_max_messages:
        return Refusal(Bound.PER_DEVICE_MAX_MESSAGES,
                       f"device has {device_messages} queued messages "
                       f"(per_device_max_messages {limits.per_device_max_messages})")
    return None


def memory_refusal(pending: int, device_pending: int, qos: int, payload: int) -> Refusal | None:
    """Why a message must not wait in memory for a commit (see MAX_PENDING_BYTES), or None."""
    if pending + payload > MAX_PENDING_BYTES:
        return Refusal(Bound.PENDING_BYTES, f"{pending} bytes already wait for the disk "
                                            f"(at most {MAX_PENDING_BYTES}); the disk is not keeping up")
    if qos == 0 and device_pending + payload > MAX_PENDING_QOS0_BYTES_PER_DEVICE:
        return Refusal(Bound.PENDING_BYTES, f"the device has {device_pending} bytes of QoS 0 waiting for the disk "
                                            f"(at most {MAX_PENDING_QOS0_BYTES_PER_DEVICE}); QoS 0 is dropped")
    return None

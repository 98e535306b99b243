"""The outbox's bounds, as a pure decision over in-memory counts.

Policy when full: refuse the *new* message (the device gets no PUBACK and keeps it; QoS 0 is dropped
and counted), never evict an acknowledged one. Expired messages (time-to-live) are the only ones that
leave without reaching the hub, and they are counted.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class OutboxLimits:
    time_to_live: float = 7200.0  # seconds; edgeHub's timeToLiveSecs in its deployment templates
    max_messages: int = 1_000_000
    max_bytes: int = 1024**3
    per_device_max_messages: int = 100_000


def refusal(limits: OutboxLimits, messages: int, size: int, device_messages: int, payload: int) -> str | None:
    """Why one more message of `payload` bytes does not fit, or None if it does."""
    if messages + 1 > limits.max_messages:
        return f"outbox holds {messages} messages (max_messages {limits.max_messages})"
    if size + payload > limits.max_bytes:
        return f"outbox holds {size} bytes (max_bytes {limits.max_bytes})"
    if device_messages + 1 > limits.per_device_max_messages:
        quota = limits.per_device_max_messages
        return f"device has {device_messages} queued messages (per_device_max_messages {quota})"
    return None

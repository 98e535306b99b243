"""How long to wait before the next attempt to reach the hub: exponential, capped, jittered."""

from __future__ import annotations

# edgeHub retries its device scope refresh every 60 s until the first success; we start faster.
BACKOFF_BASE = 1.0
BACKOFF_CAP = 60.0


def next_backoff(attempt: int, jitter: float, *, base: float = BACKOFF_BASE, cap: float = BACKOFF_CAP) -> float:
    """Seconds to wait after `attempt` consecutive failures (0 = the first), with "equal jitter".

    The ceiling doubles from `base` up to `cap`; the wait is half the ceiling plus `jitter` (a number in
    [0, 1], random in production) times the other half, so gateways that lost the hub together do not
    come back in lockstep, and no wait is ever shorter than half the ceiling.
    """
    if attempt < 0:
        raise ValueError(f"attempt must be >= 0, got {attempt}")
    if not 0.0 <= jitter <= 1.0:
        raise ValueError(f"jitter must be within [0, 1], got {jitter}")
    ceiling = min(cap, base * 2.0 ** min(attempt, 64))
    return ceiling / 2 + ceiling / 2 * jitter

"""How long a TempSensor waits before dialling the gateway again: exponential, capped, full jitter."""

from __future__ import annotations


def next_backoff(attempt: int, base: float, cap: float, rand: float) -> float:
    """Seconds to wait after `attempt` consecutive failures (0 = the first): `rand` (in [0, 1]) times
    a ceiling that doubles from `base` up to `cap`.

    Full jitter, not the gateway's equal jitter (gateway/hub/backoff.py): when a gateway restarts,
    its whole fleet loses the connection in the same instant, and spreading the redials over the
    entire window is what keeps them from arriving at the restarted gateway together.
    """
    if attempt < 0:
        raise ValueError(f"attempt must be >= 0, got {attempt}")
    if not 0.0 < base <= cap:
        raise ValueError(f"need 0 < base <= cap, got base={base}, cap={cap}")
    if not 0.0 <= rand <= 1.0:
        raise ValueError(f"rand must be within [0, 1], got {rand}")
    # min() before the power: 2.0 ** 1100 overflows a float.
    return min(cap, base * 2.0 ** min(attempt, 64)) * rand

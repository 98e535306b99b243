"""Rate limiting for log lines that a hostile or broken peer could otherwise make endless."""

from __future__ import annotations


class RateLimiter:
    """Allows `burst` events per `interval` seconds per key; counts what it suppressed. `now` is passed in."""

    def __init__(self, interval: float = 10.0, burst: int = 5, max_keys: int = 10_000) -> None:
        self.interval, self.burst, self.max_keys = interval, burst, max_keys
        self._windows: dict[str, tuple[float, int]] = {}
        self._held: dict[str, int] = {}  # key -> lines suppressed since its last summary
        self.suppressed = 0

    def allow(self, key: str, now: float) -> bool:
        start, count = self._windows.get(key, (now, 0))
        if now - start >= self.interval:
            start, count = now, 0
        if count >= self.burst:
            self.suppressed += 1
            if key in self._held or len(self._held) < self.max_keys:
                self._held[key] = self._held.get(key, 0) + 1
            return False
        if len(self._windows) >= self.max_keys and key not in self._windows:
            # Bounded memory: forget old windows rather than grow with every key a peer invents.
            self._windows.clear()
        self._windows[key] = (start, count + 1)
        return True

    def take_summary(self) -> dict[str, int]:
        """What was suppressed per key since the last call (for a periodic "N similar lines" line)."""
        held, self._held = self._held, {}
        return held

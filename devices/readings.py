"""TempSensor readings: a plausible random walk, as pure functions of the previous reading."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class Reading:
    temperature: float
    humidity: float
    seq: int
    ts: datetime

    def to_json(self) -> bytes:
        ts = self.ts.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        body = {"temperature": self.temperature, "humidity": self.humidity, "seq": self.seq, "ts": ts}
        return json.dumps(body, separators=(",", ":")).encode()


def first_reading(now: datetime, rand: float) -> Reading:
    return Reading(round(18.0 + 6.0 * rand, 2), round(40.0 + 20.0 * rand, 1), 1, now)


def next_reading(prev: Reading, now: datetime, step_t: float, step_h: float) -> Reading:
    """`step_t`, `step_h` in [-1, 1]: a small step, kept within the ranges a real room stays in."""
    temperature = min(45.0, max(-10.0, prev.temperature + 0.25 * step_t))
    humidity = min(95.0, max(5.0, prev.humidity + 0.5 * step_h))
    return Reading(round(temperature, 2), round(humidity, 1), prev.seq + 1, now)

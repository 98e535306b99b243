"""Counters and gauges: cheap, in-process, labelled. Read by `edgegate status`, /metrics and the tests.

Plain values only: the Prometheus text format is gateway.service.exposition's, imported only where
/metrics is served (prometheus_client is 2 MiB of a gateway that has no [health] listener).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Gauge:
    """One gauge sample for /metrics."""

    name: str
    help: str
    value: float
    labels: Mapping[str, str] = field(default_factory=dict)


class Counters:
    """Monotonic counters keyed by name and a sorted label tuple."""

    def __init__(self) -> None:
        self._values: Counter[tuple[str, tuple[tuple[str, str], ...]]] = Counter()

    def inc(self, name: str, amount: int = 1, **labels: str) -> None:
        self._values[(name, tuple(sorted(labels.items())))] += amount

    def get(self, name: str, **labels: str) -> int:
        return self._values[(name, tuple(sorted(labels.items())))]

    def snapshot(self) -> dict[str, int]:
        """Flat view: `name{k="v",...}` -> value."""
        out: dict[str, int] = {}
        for (name, labels), value in sorted(self._values.items()):
            key = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels) + "}" if labels else "")
            out[key] = value
        return out

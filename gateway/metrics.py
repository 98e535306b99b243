"""Counters: cheap, in-process, labelled. Read by `edgegate status` and the tests."""

from __future__ import annotations

from collections import Counter


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

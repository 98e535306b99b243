"""Benchmark results as a Markdown table: median of the runs with min-max, and the ratio to Mosquitto."""

from __future__ import annotations

import platform
import statistics
from dataclasses import dataclass, field

import psutil


@dataclass
class Figure:
    name: str
    unit: str
    higher_is_better: bool
    values: dict[str, list[float]] = field(default_factory=dict)  # target -> one value per run

    def add(self, target: str, value: float) -> None:
        self.values.setdefault(target, []).append(value)

    def cell(self, target: str) -> str:
        runs = self.values.get(target)
        if not runs:
            return "–"
        med = statistics.median(runs)
        text = _fmt(med)
        if len(runs) > 1:
            text += f" ({_fmt(min(runs))}–{_fmt(max(runs))})"
        return text

    def ratio(self, target: str, reference: str = "mosquitto") -> str:
        mine, ref = self.values.get(target), self.values.get(reference)
        if not mine or not ref or not statistics.median(ref):
            return "–"
        return f"{statistics.median(mine) / statistics.median(ref):.2f}×"


def _fmt(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def machine() -> str:
    mem = psutil.virtual_memory().total / 2**30
    return (f"{platform.processor() or platform.machine()}, {psutil.cpu_count()} cores, {mem:.0f} GiB RAM, "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}")


def table(figures: list[Figure], targets: list[str]) -> str:
    head = ["figure", "unit", *targets, *(f"{t} / mosquitto" for t in targets if t != "mosquitto")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for f in figures:
        better = "↑" if f.higher_is_better else "↓"
        row = [f"{f.name} {better}", f.unit, *(f.cell(t) for t in targets),
               *(f.ratio(t) for t in targets if t != "mosquitto")]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)

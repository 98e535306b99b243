"""The Prometheus text format for /metrics, built with prometheus_client from the gateway's own counters
and a snapshot of its gauges (so the hot path keeps its cheap in-process `Counters`)."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterator, Mapping

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from gateway.metrics import Gauge

_KEY = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_key(key: str) -> tuple[str, dict[str, str]]:
    """`name{k="v"}` (a `Counters.snapshot()` key) -> (name, labels)."""
    match = _KEY.match(key)
    if match is None:
        raise ValueError(f"not a metric key: {key!r}")
    return match.group(1), dict(_LABEL.findall(match.group(2) or ""))


def counter_families(snapshot: Mapping[str, int]) -> Iterator[Metric]:
    """One counter family per name; a name's samples may carry different label sets (missing ones are "")."""
    by_name: dict[str, list[tuple[dict[str, str], int]]] = defaultdict(list)
    for key, value in snapshot.items():
        name, labels = parse_key(key)
        by_name[name].append((labels, value))
    for name, samples in sorted(by_name.items()):
        label_names = sorted({k for labels, _ in samples for k in labels})
        family = CounterMetricFamily(name.removesuffix("_total"), f"edgegate counter {name}", labels=label_names)
        for labels, value in samples:
            family.add_metric([labels.get(k, "") for k in label_names], value)
        yield family


def gauge_families(gauges: list[Gauge]) -> Iterator[Metric]:
    by_name: dict[str, list[Gauge]] = defaultdict(list)
    for gauge in gauges:
        by_name[gauge.name].append(gauge)
    for name, members in sorted(by_name.items()):
        label_names = sorted({k for g in members for k in g.labels})
        family = GaugeMetricFamily(name, members[0].help, labels=label_names)
        for g in members:
            family.add_metric([g.labels.get(k, "") for k in label_names], g.value)
        yield family


class _Snapshot(Collector):
    def __init__(self, counters: Mapping[str, int], gauges: list[Gauge]) -> None:
        self.counters, self.gauges = counters, gauges

    def collect(self) -> Iterator[Metric]:
        yield from counter_families(self.counters)
        yield from gauge_families(self.gauges)


def render(counters: Mapping[str, int], gauges: list[Gauge], *, process: bool = True) -> bytes:
    """The exposition text: every counter, every gauge, and process_* figures (CPU, RSS, open files)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(counters, gauges))
    if process:
        ProcessCollector(registry=registry)
    return generate_latest(registry)

"""`make bench` / `make bench-quick`: edgegate, plain amqtt 0.12.1 (built-in TLS listener) and
Mosquitto 2 (require_certificate) under the same load, with the same ECDSA P-256 certificates, in one
run; a Markdown table with the median of the runs (min-max) and ratios to Mosquitto.

    python -m bench [--quick] [--runs N] [--write docs/BENCHMARKS.md] [--targets edgegate,amqtt,mosquitto]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from bench import disk
from bench.authbench import auth_p99_ms
from bench.edgegate_target import EdgegateProcessTarget, EdgegateTarget
from bench.load import (
    HeldConnections,
    device_id,
    ensure_device_files,
    open_connections,
    publish_rate,
    publish_rate_and_cpu,
)
from bench.pki import BenchPKI
from bench.report import Figure, machine, table
from bench.targets import AmqttTarget, MosquittoPersistTarget, MosquittoTarget, Target

TARGETS: dict[str, type[Target]] = {"edgegate": EdgegateTarget, "amqtt": AmqttTarget, "mosquitto": MosquittoTarget,
                                    "edgegate-process": EdgegateProcessTarget,
                                    "mosquitto-persist": MosquittoPersistTarget}
# Targets that keep messages on disk: the disk figures are measured for these only.
PERSISTENT = ("edgegate", "edgegate-process", "mosquitto-persist")


class Sizes:
    """How much load each figure gets. Connections are opened in stages and held: the fan-in figure
    runs with `fanin` subscribed devices connected, RSS per connection is read at `mem_small` and at
    `mem_large`, and the storm is `storm` devices arriving at once on top of the first `mem_small`."""

    def __init__(self, quick: bool) -> None:
        self.messages = 5_000 if quick else 50_000
        self.fanin = 100 if quick else 1_000
        self.mem_small = 200 if quick else 2_000  # the front-door issue's figure
        self.storm = 300 if quick else 5_000
        self.mem_large = 600 if quick else 10_000  # the performance issue's figure
        self.backlog = 5_000 if quick else 100_000
        self.auth_devices = 100_000
        self.fleet = 1_000  # devices x 1 msg/s: the SD-card issue's figure, at full size even in --quick
        self.fleet_seconds = 15.0 if quick else 60.0

    @property
    def devices(self) -> int:
        return max(FIRST_IDLE + self.mem_large, self.fleet)


FIRST_IDLE = 20  # devices 0..19 publish; idle connections use the ids after them


def measure_disk(name: str, target: Target, s: Sizes, figs: dict[str, Figure], pki: BenchPKI) -> None:
    """Disk bytes per message, sync calls/s and PUBACK latency: a fleet's trickle, then one fast publisher."""
    trickle = disk.fleet(target, pki, 0, s.fleet, s.fleet_seconds)
    figs["fleet_bytes"].add(name, trickle["bytes_per_msg"])
    figs["fleet_syncs"].add(name, trickle["syncs_per_s"])
    figs["fleet_cpu"].add(name, trickle["cpu_us"])
    figs["fleet_p50"].add(name, trickle["p50_ms"])
    figs["fleet_p99"].add(name, trickle["p99_ms"])
    fast = disk.fast_publisher(target, s.messages)
    figs["fast_bytes"].add(name, fast["bytes_per_msg"])
    figs["fast_syncs"].add(name, fast["syncs_per_s"])
    figs["fast_rate"].add(name, fast["rate"])


def measure(name: str, target: Target, s: Sizes, figs: dict[str, Figure], pki: BenchPKI,
            only_disk: bool = False, only_memory: bool = False) -> None:
    target.start()
    if only_disk:
        try:
            measure_disk(name, target, s, figs, pki)
        finally:
            target.stop()
        return
    held: list[HeldConnections] = []

    def hold(count: int) -> HeldConnections:
        first = FIRST_IDLE + sum(h.admitted + h.refused + h.failed for h in held)
        held.append(open_connections(target, pki, first, count, subscribe=True))
        return held[-1]

    def rss_per_connection(base: int) -> float:
        time.sleep(1.0)
        admitted = sum(h.admitted for h in held)
        return (target.rss() - base) / admitted / 1024 if admitted else 0.0

    try:
        time.sleep(1.0)
        figs["startup"].add(name, target.startup_s)
        idle = target.rss()
        figs["idle_rss"].add(name, idle / 2**20)
        if not only_memory:
            for key, publishers, qos in (("qos1", [0], 1), ("qos0", [0], 0), ("fanin10", list(range(10)), 1)):
                rate, cpu = publish_rate_and_cpu(target, publishers, s.messages, qos)
                figs[key].add(name, rate)
                figs[f"{key}_cpu"].add(name, cpu)
        base = target.rss()
        hold(s.fanin)
        if not only_memory:
            rate, cpu = publish_rate_and_cpu(target, list(range(10)), s.messages, 1)
            figs["fanin"].add(name, rate)
            figs["fanin_cpu"].add(name, cpu)
        hold(s.mem_small - s.fanin)
        figs["per_conn_small"].add(name, rss_per_connection(base))
        storm = hold(s.storm)
        figs["admission"].add(name, storm.admitted / storm.seconds)
        figs["refused"].add(name, storm.refused + storm.failed)
        hold(s.mem_large - s.mem_small - s.storm)
        per_conn = rss_per_connection(base)
        figs["per_conn_large"].add(name, per_conn)
        figs["rss_large"].add(name, target.rss() / 2**20)
        # What an operator sizing a Pi asks: how many idle devices fit under MemoryMax=256M, from this
        # run's idle RSS and its RSS per connection at the large size (no room kept for bursts).
        figs["fit_256"].add(name, (256 * 2**20 - idle) / (per_conn * 1024) if per_conn else 0.0)
        for h in held:
            h.close()
        held.clear()
        if only_memory:
            return
        if name in PERSISTENT:
            measure_disk(name, target, s, figs, pki)
        if isinstance(target, EdgegateTarget):
            figs["drain"].add(name, drain_rate(target, s.backlog))
    finally:
        for h in held:
            h.close()
        target.stop()


def drain_rate(target: EdgegateTarget, backlog: int) -> float:
    """Fill the outbox while the hub refuses connections, then time the drain once it is back."""
    assert target.hub is not None
    target.hub.admin.fault("down")
    # mosquitto_pub sends at most 65,534 messages (bench.load): the full backlog takes two publishers.
    publish_rate(target, list(range(1, 1 + -(-backlog // 50_000))), backlog, 1)
    status = target.state / "status.json"

    def depth() -> int:
        try:
            return int(json.loads(status.read_text()).get("outbox_depth", -1))
        except (OSError, ValueError):
            return -1

    deadline = time.monotonic() + 30
    while depth() < backlog and time.monotonic() < deadline:
        time.sleep(0.1)
    target.hub.admin.fault("up")
    start = time.monotonic()
    while depth() != 0 and time.monotonic() < start + 600:
        time.sleep(0.05)
    return backlog / (time.monotonic() - start)


def fdatasync_ms(directory: Path, seconds: float = 2.0) -> float:
    """Median time of a 4 KiB write + fdatasync in `directory`: what one durable commit costs here."""
    path = directory / "fdatasync-probe"
    times: list[float] = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            start = time.perf_counter()
            os.pwrite(fd, b"\0" * 4096, 0)
            os.fdatasync(fd)
            times.append(time.perf_counter() - start)
    finally:
        os.close(fd)
        path.unlink()
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="small sizes, one run (under a minute)")
    parser.add_argument("--runs", type=int, help="runs per figure (default 3, quick 1)")
    parser.add_argument("--targets", default="edgegate,amqtt,mosquitto")
    parser.add_argument("--write", type=Path, help="write the report (Markdown) to this file")
    parser.add_argument("--only-disk", action="store_true",
                        help="only the disk figures (bytes/message, fdatasync/s, fleet PUBACK latency)")
    parser.add_argument("--only-memory", action="store_true",
                        help="only start-up, idle RSS, RSS per connection, the storm and the 256 MiB fit")
    args = parser.parse_args()
    runs = args.runs or (1 if args.quick else 3)
    sizes = Sizes(args.quick)
    names = [t for t in args.targets.split(",") if t]
    figs = {
        "startup": Figure("start to listening", "s", False),
        "idle_rss": Figure("idle RSS", "MiB", False),
        "qos1": Figure("QoS 1 ingest, 1 publisher", "msg/s", True),
        "qos1_cpu": Figure("  CPU per message", "µs", False),
        "qos0": Figure("QoS 0 ingest, 1 publisher", "msg/s", True),
        "qos0_cpu": Figure("  CPU per message", "µs", False),
        "fanin10": Figure("fan-in, 10 publishers, nothing else connected", "msg/s", True),
        "fanin10_cpu": Figure("  CPU per message", "µs", False),
        "fanin": Figure(f"fan-in, 10 publishers + {sizes.fanin:,} subscribed devices", "msg/s", True),
        "fanin_cpu": Figure("  CPU per message", "µs", False),
        "per_conn_small": Figure(f"RSS per idle TLS connection at {sizes.mem_small:,}", "KiB", False),
        "admission": Figure(f"reconnect storm, {sizes.storm:,} devices (TLS + CONNECT)", "conn/s", True),
        "refused": Figure("  of which refused or failed", "conns", False),
        "per_conn_large": Figure(f"RSS per idle TLS connection at {sizes.mem_large:,}", "KiB", False),
        "rss_large": Figure(f"RSS with {sizes.mem_large:,} idle TLS connections", "MiB", False),
        "fit_256": Figure("  idle devices that fit in 256 MiB (from idle RSS and the row above)", "devices", True),
        "drain": Figure(f"backlog drain, {sizes.backlog:,} messages to the hub", "msg/s", True),
        "auth_ss": Figure("auth decision p99, thumbprint, 100k cached", "ms", False),
        "auth_ca": Figure("auth decision p99, CA chain, 100k cached", "ms", False),
        "fleet_bytes": Figure(f"disk bytes written per 100-byte message, {sizes.fleet:,} devices x 1 msg/s",
                              "B/msg", False),
        "fleet_syncs": Figure(f"  fdatasync+fsync calls, {sizes.fleet:,} devices x 1 msg/s", "1/s", False),
        "fleet_cpu": Figure(f"  CPU per message, {sizes.fleet:,} devices x 1 msg/s (one message per read)", "µs",
                            False),
        "fleet_p50": Figure(f"  PUBACK p50, {sizes.fleet:,} devices x 1 msg/s", "ms", False),
        "fleet_p99": Figure(f"  PUBACK p99, {sizes.fleet:,} devices x 1 msg/s", "ms", False),
        "fast_bytes": Figure("disk bytes written per ~75-byte message, 1 fast QoS 1 publisher", "B/msg", False),
        "fast_syncs": Figure("  fdatasync+fsync calls, 1 fast QoS 1 publisher", "1/s", False),
        "fast_rate": Figure("  QoS 1 ingest while measured, 1 publisher", "msg/s", True),
    }
    if args.only_disk:
        figs = {k: v for k, v in figs.items() if k.startswith(("fleet_", "fast_"))}
    if args.only_memory:
        figs = {k: v for k, v in figs.items()
                if k in ("startup", "idle_rss", "per_conn_small", "admission", "refused", "per_conn_large",
                         "rss_large", "fit_256")}
    with tempfile.TemporaryDirectory(prefix="edgegate-bench-") as tmp:
        work = Path(tmp)
        pki = BenchPKI.create(work / "pki")
        ensure_device_files(pki, sizes.devices)
        pki.device_files("probe-0")
        ids = [device_id(i) for i in range(sizes.devices)] + ["probe-0"]
        for run in range(runs):
            for name in names:
                print(f"run {run + 1}/{runs}: {name} ...", flush=True)
                target = TARGETS[name](name, pki, work)
                target.prepare(ids)
                measure(name, target, sizes, figs, pki, only_disk=args.only_disk, only_memory=args.only_memory)
            if "edgegate" in names and not args.only_disk and not args.only_memory:
                p99 = auth_p99_ms(sizes.auth_devices)
                figs["auth_ss"].add("edgegate", p99["thumbprint"])
                figs["auth_ca"].add("edgegate", p99["ca_chain"])
        sync_ms = fdatasync_ms(work)
    report = (f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine()}; {runs} run(s) per figure, median "
              f"(min–max). Load: mosquitto_pub -l (C) for messages, bench/conndriver.py for connections. "
              f"This disk: fdatasync of a 4 KiB write {sync_ms:.3f} ms, a ceiling of {1000 / sync_ms:,.0f} "
              f"commits/s (with mosquitto_pub's 20 in flight, {20 * 1000 / sync_ms:,.0f} msg/s for one "
              f"publisher if every commit carried its whole window).\n\n"
              + table(list(figs.values()), names))
    print(report)
    if args.write:
        args.write.write_text(report + "\n")


if __name__ == "__main__":
    main()

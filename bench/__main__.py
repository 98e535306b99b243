"""`make bench` / `make bench-quick`: edgegate, plain amqtt 0.12.1 (built-in TLS listener) and
Mosquitto 2 (require_certificate) under the same load, with the same ECDSA P-256 certificates, in one
run; a Markdown table with the median of the runs (min-max) and ratios to Mosquitto.

    python -m bench [--quick] [--runs N] [--write docs/BENCHMARKS.md] [--targets edgegate,amqtt,mosquitto]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.authbench import auth_p99_ms
from bench.edgegate_target import EdgegateTarget
from bench.load import device_id, ensure_device_files, open_connections, publish_rate
from bench.pki import BenchPKI
from bench.report import Figure, machine, table
from bench.targets import AmqttTarget, MosquittoTarget, Target

TARGETS: dict[str, type[Target]] = {"edgegate": EdgegateTarget, "amqtt": AmqttTarget, "mosquitto": MosquittoTarget}


class Sizes:
    def __init__(self, quick: bool) -> None:
        self.messages = 5_000 if quick else 50_000
        self.idle = 200 if quick else 2_000  # connections held for RSS and admission rate
        self.fanin = 100 if quick else 1_000  # subscribed devices during the fan-in figure
        self.backlog = 5_000 if quick else 100_000
        self.auth_devices = 100_000


def measure(name: str, target: Target, s: Sizes, figs: dict[str, Figure], pki: BenchPKI) -> None:
    target.start()
    try:
        time.sleep(1.0)
        figs["startup"].add(name, target.startup_s)
        figs["idle_rss"].add(name, target.rss() / 2**20)
        figs["qos1"].add(name, publish_rate(target, [0], s.messages, 1))
        figs["qos0"].add(name, publish_rate(target, [0], s.messages, 0))
        figs["fanin10"].add(name, publish_rate(target, list(range(10)), s.messages, 1))
        base = target.rss()
        held = open_connections(target, pki, 20, s.idle, subscribe=True)
        try:
            figs["admission"].add(name, held.admitted / held.seconds)
            figs["refused"].add(name, held.refused + held.failed)
            time.sleep(1.0)
            figs["per_conn"].add(name, (target.rss() - base) / held.admitted / 1024 if held.admitted else 0)
            figs["fanin"].add(name, publish_rate(target, list(range(10)), s.messages, 1))
        finally:
            held.close()
        if isinstance(target, EdgegateTarget):
            figs["drain"].add(name, drain_rate(target, s.backlog))
    finally:
        target.stop()


def drain_rate(target: EdgegateTarget, backlog: int) -> float:
    """Fill the outbox while the hub refuses connections, then time the drain once it is back."""
    assert target.hub is not None
    target.hub.admin.fault("down")
    publish_rate(target, [1], backlog, 1)
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


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="small sizes, one run (under a minute)")
    parser.add_argument("--runs", type=int, help="runs per figure (default 3, quick 1)")
    parser.add_argument("--targets", default="edgegate,amqtt,mosquitto")
    parser.add_argument("--write", type=Path, help="write the report (Markdown) to this file")
    args = parser.parse_args()
    runs = args.runs or (1 if args.quick else 3)
    sizes = Sizes(args.quick)
    names = [t for t in args.targets.split(",") if t]
    figs = {
        "startup": Figure("start to listening", "s", False),
        "idle_rss": Figure("idle RSS", "MiB", False),
        "qos1": Figure("QoS 1 ingest, 1 publisher", "msg/s", True),
        "qos0": Figure("QoS 0 ingest, 1 publisher", "msg/s", True),
        "fanin10": Figure("fan-in, 10 publishers, nothing else connected", "msg/s", True),
        "fanin": Figure(f"fan-in, 10 publishers + {sizes.fanin if sizes.fanin == sizes.idle else sizes.idle} "
                        "subscribed devices", "msg/s", True),
        "admission": Figure(f"reconnect storm, {sizes.idle} devices (TLS + CONNECT)", "conn/s", True),
        "refused": Figure("  of which refused or failed", "conns", False),
        "per_conn": Figure(f"RSS per idle TLS connection at {sizes.idle}", "KiB", False),
        "drain": Figure(f"backlog drain, {sizes.backlog:,} messages to the hub", "msg/s", True),
        "auth_ss": Figure("auth decision p99, thumbprint, 100k cached", "ms", False),
        "auth_ca": Figure("auth decision p99, CA chain, 100k cached", "ms", False),
    }
    with tempfile.TemporaryDirectory(prefix="edgegate-bench-") as tmp:
        work = Path(tmp)
        pki = BenchPKI.create(work / "pki")
        ensure_device_files(pki, 20 + sizes.idle)
        pki.device_files("probe-0")
        ids = [device_id(i) for i in range(20 + sizes.idle)] + ["probe-0"]
        for run in range(runs):
            for name in names:
                print(f"run {run + 1}/{runs}: {name} ...", flush=True)
                target = TARGETS[name](name, pki, work)
                target.prepare(ids)
                measure(name, target, sizes, figs, pki)
            if "edgegate" in names:
                p99 = auth_p99_ms(sizes.auth_devices)
                figs["auth_ss"].add("edgegate", p99["thumbprint"])
                figs["auth_ca"].add("edgegate", p99["ca_chain"])
    report = (f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine()}; {runs} run(s) per figure, median "
              f"(min–max). Load: mosquitto_pub -l (C) for messages, bench/conndriver.py for connections.\n\n"
              + table(list(figs.values()), names))
    print(report)
    if args.write:
        args.write.write_text(report + "\n")


if __name__ == "__main__":
    main()

"""Where a QoS 1 message's CPU goes: a real `edgegate run` (or another target) under `mosquitto_pub -l`,
with py-spy sampling the broker process; prints CPU µs per message and the top functions by own time.

    python -m bench.hotpath [--target edgegate] [--publishers 1] [--messages 30000] [--qos 1] [--profile]
    python -m bench.hotpath --fleet 1000 [--seconds 20] [--profile]

`--fleet N` is a real fleet's pattern instead: N devices (bench.fleet, TLS, one connection each) each
publishing one QoS 1 reading a second, so every reading arrives in a read of its own and its PUBACK
leaves in a write of its own. mosquitto_pub's window of 20 brings ten readings per read; a fleet never
does, and that is the pattern that sets how many devices one CPU serves.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.__main__ import TARGETS
from bench.fleet import drive
from bench.load import device_id, ensure_device_files, publish_rate_and_cpu
from bench.pki import BenchPKI
from bench.targets import Target


def inclusive(raw: Path, limit: int) -> list[tuple[float, str]]:
    """Samples under each function (counted once per stack), as shares of all samples."""
    under: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        for name in set(stack.split(";")):
            under[name] += n
    return [(100.0 * n / total, name) for name, n in under.most_common(limit)] if total else []


def top_functions(raw: Path, limit: int) -> list[tuple[float, str]]:
    """Self time per function from py-spy's collapsed stacks, as shares of all samples."""
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        n = int(count)
        total += n
        own[frames[-1]] += n
    return [(100.0 * n / total, name) for name, n in own.most_common(limit)] if total else []


def spied(target: object, hub: bool) -> int:
    """The pid py-spy samples: the broker, or (edgegate) the hub mock behind it."""
    proc = getattr(getattr(target, "hub", None), "proc", None) if hub else getattr(target, "proc", None)
    if proc is None:
        raise SystemExit("nothing to profile: this target has no such process")
    return int(proc.pid)


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds per thread of `pid` (utime + stime from /proc)."""
    out: dict[int, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(task.name)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        out[-int(task.name)] = int(fields[12]) / os.sysconf("SC_CLK_TCK")  # system time alone
    return out


def commits(target: object) -> tuple[int, int] | None:
    """The outbox's commits and the forwarder's POSTs so far, from status.json (edgegate only; rewritten
    every 2 s)."""
    state = getattr(target, "state", None)
    if state is None:
        return None
    time.sleep(2.5)
    status = json.loads((state / "status.json").read_text())
    found = status.get("outbox_store", {}).get("commits")
    posts = status.get("counters", {}).get("edgegate_forward_posts_total", 0)
    return (int(found), int(posts)) if found is not None else None


def fleet_load(target: Target, pki: BenchPKI, count: int, seconds: float,
               connected: Callable[[], None] = lambda: None) -> tuple[float, int]:
    """(readings/s acknowledged, readings acknowledged): `count` devices x 1 QoS 1 reading a second."""
    result = drive(target.port, pki.root_path, pki.directory / "devices", 0, count, seconds, connected=connected)
    return result["acked"] / seconds, int(result["acked"])  # its "seconds" include 2 s for the last PUBACKs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", default="edgegate")
    parser.add_argument("--publishers", type=int, default=1)
    parser.add_argument("--messages", type=int, default=30_000)
    parser.add_argument("--qos", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="sample the broker with py-spy during the last run")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--perf", type=Path, help="record the broker with `perf record -g` into this file (last run)")
    parser.add_argument("--cprofile", type=Path, help="edgegate: run the broker under cProfile, stats to this file")
    parser.add_argument("--profile-hub", action="store_true", help="with --profile: sample the hub mock instead")
    parser.add_argument("--raw", type=Path, help="with --profile: keep py-spy's collapsed stacks in this file")
    parser.add_argument("--hub-down", action="store_true", help="edgegate: the hub refuses, so nothing is forwarded")
    parser.add_argument("--fleet", type=int, default=0,
                        help="load: this many devices x 1 reading/s (bench.fleet) instead of mosquitto_pub -l")
    parser.add_argument("--seconds", type=float, default=20.0, help="with --fleet: how long each run publishes")
    args = parser.parse_args()
    devices = max(args.publishers, args.fleet)
    with tempfile.TemporaryDirectory(prefix="edgegate-hotpath-") as tmp:
        work = Path(tmp)
        pki = BenchPKI.create(work / "pki")
        ensure_device_files(pki, devices)
        target = TARGETS[args.target](args.target, pki, work)
        target.prepare([device_id(i) for i in range(devices)])
        if args.cprofile is not None:
            plain = target.command
            target.command = lambda: [plain()[0], "/tmp/prof/run_prof.py", str(args.cprofile), *plain()[3:]]  # type: ignore[method-assign]
        target.start()
        try:
            hub = getattr(target, "hub", None)
            if args.hub_down and hub is not None:
                hub.admin.fault("down")
            publishers = list(range(args.publishers))
            if args.fleet:
                fleet_load(target, pki, args.fleet, 5.0)  # warm up: handshakes, caches, the hub link
            else:
                publish_rate_and_cpu(target, publishers, 2_000, args.qos)  # warm up: connections, caches
            for run in range(args.runs):
                last = run == args.runs - 1
                raw = work / "spy.txt"
                pid = target.proc.pid if target.proc is not None else 0
                hub_proc = getattr(getattr(target, "hub", None), "proc", None)
                meters: dict[str, Any] = {}

                def start_meters(last: bool = last, pid: int = pid, hub_proc: Any = hub_proc,
                                 meters: dict[str, Any] = meters, raw: Path = raw) -> None:
                    if args.profile and last and target.proc is not None:
                        meters["spy"] = subprocess.Popen(
                            [str(Path(sys.executable).parent / "py-spy"), "record", "--format", "raw", "-r", "250",
                             "--gil", "-o", str(raw), "--pid", str(spied(target, args.profile_hub))],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    if args.perf is not None and last:
                        meters["perf"] = subprocess.Popen(["perf", "record", "-F", "2000", "-g", "-o",
                                                           str(args.perf), "-p", str(pid)],
                                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    meters["commits"] = commits(target)
                    meters["threads"] = thread_cpu(pid)
                    meters["hub"] = sum(v for k, v in thread_cpu(hub_proc.pid).items() if k > 0) if hub_proc else 0.0
                    meters["cpu"] = target.cpu_seconds()

                if args.fleet:
                    rate, messages = fleet_load(target, pki, args.fleet, args.seconds, start_meters)
                else:
                    start_meters()
                    messages = args.messages
                    rate, _ = publish_rate_and_cpu(target, publishers, args.messages, args.qos)
                cpu = (target.cpu_seconds() - meters["cpu"]) / messages * 1e6
                if hub_proc is not None:
                    hub_cpu = sum(v for k, v in thread_cpu(hub_proc.pid).items() if k > 0) - meters["hub"]
                    print(f"  the hub mock: {hub_cpu / messages * 1e6:.1f} µs CPU per message")
                perf = meters.get("perf")
                if perf is not None:
                    perf.send_signal(2)
                    perf.wait(60)
                after, before = thread_cpu(pid), meters["threads"]
                per_thread = sorted(((after[t] - before.get(t, 0.0)) / messages * 1e6 for t in after if t > 0),
                                    reverse=True)
                system = sum(after[t] - before.get(t, 0.0) for t in after if t < 0) / messages * 1e6
                commits_before, commits_after = meters["commits"], commits(target)
                if commits_before is not None and commits_after is not None and commits_after[0] > commits_before[0]:
                    print(f"  {messages / (commits_after[0] - commits_before[0]):.1f} messages per commit, "
                          f"{messages / max(1, commits_after[1] - commits_before[1]):.1f} per POST to the hub")
                shown = ", ".join(f"{us:.0f}" for us in per_thread if us >= 1)
                load = f"{args.fleet} devices x 1 reading/s" if args.fleet else f"{args.publishers} mosquitto_pub -l"
                print(f"{args.target} ({load}): {rate:,.0f} msg/s, {cpu:.1f} µs CPU per message "
                      f"(by thread, main first: {shown}; in the kernel {system:.0f})", flush=True)
                spy = meters.get("spy")
                if spy is not None:
                    spy.send_signal(2)
                    spy.wait(60)
                    if args.raw is not None:
                        args.raw.write_bytes(raw.read_bytes())
                    for share, name in top_functions(raw, args.top):
                        print(f"{share:5.1f} %  {name}")
                    print("inclusive:")
                    for share, name in inclusive(raw, args.top):
                        print(f"{share:5.1f} %  {name}")
        finally:
            target.stop()


if __name__ == "__main__":
    main()

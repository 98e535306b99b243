"""Where a QoS 1 message's CPU goes: a real `edgegate run` (or another target) under `mosquitto_pub -l`,
with py-spy sampling the broker process; prints CPU µs per message and the top functions by own time.

    python -m bench.hotpath [--target edgegate] [--publishers 1] [--messages 30000] [--qos 1] [--profile]
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
from pathlib import Path

from bench.__main__ import TARGETS
from bench.load import device_id, ensure_device_files, publish_rate_and_cpu
from bench.pki import BenchPKI


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


def commits(target: object) -> int | None:
    """The outbox's commit count from status.json (edgegate only; rewritten every 2 s)."""
    state = getattr(target, "state", None)
    if state is None:
        return None
    time.sleep(2.5)
    status = json.loads((state / "status.json").read_text())
    found = status.get("outbox_store", {}).get("commits")
    return int(found) if found is not None else None


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
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgegate-hotpath-") as tmp:
        work = Path(tmp)
        pki = BenchPKI.create(work / "pki")
        ensure_device_files(pki, args.publishers)
        target = TARGETS[args.target](args.target, pki, work)
        target.prepare([device_id(i) for i in range(args.publishers)])
        if args.cprofile is not None:
            plain = target.command
            target.command = lambda: [plain()[0], "/tmp/prof/run_prof.py", str(args.cprofile), *plain()[3:]]  # type: ignore[method-assign]
        target.start()
        try:
            hub = getattr(target, "hub", None)
            if args.hub_down and hub is not None:
                hub.admin.fault("down")
            publishers = list(range(args.publishers))
            publish_rate_and_cpu(target, publishers, 2_000, args.qos)  # warm up: connections, caches
            for run in range(args.runs):
                spy = None
                raw = work / "spy.txt"
                if args.profile and run == args.runs - 1 and target.proc is not None:
                    spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--format", "raw",
                                            "-r", "250", "--gil", "-o", str(raw), "--pid",
                                            str(spied(target, args.profile_hub))],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                pid = target.proc.pid if target.proc is not None else 0
                commits_before = commits(target)
                before = thread_cpu(pid)
                perf = None
                if args.perf is not None and run == args.runs - 1:
                    perf = subprocess.Popen(["perf", "record", "-F", "2000", "-g", "-o", str(args.perf),
                                             "-p", str(pid)],
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                hub_proc = getattr(getattr(target, "hub", None), "proc", None)
                hub_before = sum(v for k, v in thread_cpu(hub_proc.pid).items() if k > 0) if hub_proc else 0.0
                rate, cpu = publish_rate_and_cpu(target, publishers, args.messages, args.qos)
                if hub_proc is not None:
                    hub_cpu = sum(v for k, v in thread_cpu(hub_proc.pid).items() if k > 0) - hub_before
                    print(f"  the hub mock: {hub_cpu / args.messages * 1e6:.1f} µs CPU per message")
                if perf is not None:
                    perf.send_signal(2)
                    perf.wait(60)
                after = thread_cpu(pid)
                per_thread = sorted(((after[t] - before.get(t, 0.0)) / args.messages * 1e6 for t in after if t > 0),
                                    reverse=True)
                system = sum(after[t] - before.get(t, 0.0) for t in after if t < 0) / args.messages * 1e6
                commits_after = commits(target)
                if commits_before is not None and commits_after is not None and commits_after > commits_before:
                    print(f"  {args.messages / (commits_after - commits_before):.1f} messages per commit")
                shown = ", ".join(f"{us:.0f}" for us in per_thread if us >= 1)
                print(f"{args.target}: {rate:,.0f} msg/s, {cpu:.1f} µs CPU per message "
                      f"(by thread, main first: {shown}; in the kernel {system:.0f})", flush=True)
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

"""One device floods QoS 0 while a small fleet publishes QoS 1: the fleet's PUBACK latency and the
gateway's peak RSS (the issue-13 drill; the front door's per-connection byte budget is what finally stops
reading the flooder's socket, the outbox's share is its per-device QoS 0 memory cap and fair commits).

    python -m bench.flood [--fleet 20] [--period 0.1] [--seconds 20] [--payload 2048] [--flood 200000] [--hub-down]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.edgegate_target import EdgegateTarget
from bench.load import _pub_command, device_id, ensure_device_files
from bench.pki import BenchPKI
from bench.targets import REPO


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.flood")
    parser.add_argument("--fleet", type=int, default=20)
    parser.add_argument("--period", type=float, default=0.1, help="seconds between a fleet device's messages")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--payload", type=int, default=2048, help="flood payload bytes")
    parser.add_argument("--flood", type=int, default=200_000, help="QoS 0 messages the flooder sends")
    parser.add_argument("--hub-down", action="store_true",
                        help="the hub refuses connections throughout (an offline site: nothing is forwarded)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgegate-flood-") as tmp:
        work = Path(tmp)
        pki = BenchPKI.create(work / "pki")
        ensure_device_files(pki, args.fleet + 1)
        pki.device_files("probe-0")
        target = EdgegateTarget("edgegate", pki, work)
        target.prepare([device_id(i) for i in range(args.fleet + 1)] + ["probe-0"])
        target.start()
        if args.hub_down:
            assert target.hub is not None
            target.hub.admin.fault("down")
        peak = [target.rss()]
        idle = peak[0]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], target.rss())
                time.sleep(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        try:
            fleet = subprocess.Popen([sys.executable, "-m", "bench.fleet", str(target.port), str(pki.root_path),
                                      str(pki.directory / "devices"), "1", str(args.fleet), "--period",
                                      str(args.period), "--seconds", str(args.seconds), "--wait-stdin"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
            assert fleet.stdin is not None
            assert fleet.stdout is not None
            fleet.stdout.readline()
            flooder = subprocess.Popen(_pub_command(target, 0, 0), stdin=subprocess.PIPE,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            assert flooder.stdin is not None
            line = b"x" * (args.payload - 1) + b"\n"
            sampler.start()
            fleet.stdin.write("go\n")
            fleet.stdin.flush()
            started = time.monotonic()
            try:
                for _ in range(args.flood):
                    flooder.stdin.write(line)
                flooder.stdin.close()
            except BrokenPipeError:
                pass
            result = json.loads(fleet.stdout.readline())
            flood_seconds = time.monotonic() - started
            flooder.kill()
            counters = json.loads((target.state / "status.json").read_text()).get("counters", {})
        finally:
            done.set()
            target.stop()
        dropped = {k: v for k, v in counters.items() if "outbox_full" in k or "refused" in k}
        print(json.dumps({"fleet_p50_ms": round(result["p50_ms"], 1), "fleet_p99_ms": round(result["p99_ms"], 1),
                          "fleet_acked": result["acked"], "fleet_sent": result["sent"],
                          "rss_idle_mib": round(idle / 2**20, 1), "rss_peak_mib": round(peak[0] / 2**20, 1),
                          "flood_seconds": round(flood_seconds, 1), "refusals": dropped}, indent=2))


if __name__ == "__main__":
    main()

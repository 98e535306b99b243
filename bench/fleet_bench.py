"""`python -m bench.fleet_bench 5000 [--interval 5] [--seconds 60]`: how many TempSensors one `tempsensor
--fleet` process holds against a real gateway and hub-mock, how fast they connect, and the PUBACK latency
percentiles it reports. Prints one JSON object (the figures docs/OPERATIONS.md quotes)."""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from tests.bigfleet import make_big_fleet
from tests.hubproc import REPO, HubProcess
from tests.serviceproc import ServiceGateway


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.fleet_bench")
    p.add_argument("sensors", type=int)
    p.add_argument("--interval", type=float, default=5.0, help="seconds between readings per sensor")
    p.add_argument("--seconds", type=float, default=60.0, help="how long to publish once all are connected")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    with HubProcess.start(tmp / "hub") as hub:
        gw = ServiceGateway.launch(tmp / "gw", hub, args=("--log-level", "WARNING"))
        try:
            make_big_fleet(hub, tmp / "fleet", args.sensors)
            while gw.status().get("sync", {}).get("cached_devices") != args.sensors:  # type: ignore[union-attr]
                time.sleep(0.5)
            started = time.monotonic()
            proc = subprocess.Popen(
                [sys.executable, "-m", "devices.cli", "--gateway-hostname", "edgegateway.local", "--connect-address",
                 "127.0.0.1", "--port", str(gw.port), "--ca-file", str(gw.root), "--fleet", str(args.sensors),
                 "--fleet-dir", str(tmp / "fleet"), "--interval", str(args.interval), "--json-log"],
                cwd=REPO, stdout=subprocess.PIPE, text=True)
            connected: set[str] = set()
            summary: dict[str, object] = {}
            failures = [0]

            def read() -> None:
                assert proc.stdout is not None
                for line in proc.stdout:
                    event = json.loads(line)
                    if event["event"] == "connected":
                        connected.add(event["device"])
                    elif event["event"] == "summary":
                        summary.update(event)
                    elif event["event"] in ("connect_failed", "refused", "disconnected"):
                        failures[0] += 1

            reader = threading.Thread(target=read, daemon=True)
            reader.start()
            while len(connected) < args.sensors and proc.poll() is None:
                time.sleep(0.2)
            connect_seconds = time.monotonic() - started
            time.sleep(args.seconds)
            fleet_rss = psutil.Process(proc.pid).memory_info().rss
            gateway_rss = psutil.Process(gw.proc.pid).memory_info().rss  # type: ignore[union-attr]
            proc.send_signal(signal.SIGINT)
            proc.wait(300)
            reader.join(30)
        finally:
            gw.stop()
    print(json.dumps({"sensors": args.sensors, "connected": len(connected), "seconds_to_connect_all":
                      round(connect_seconds, 1), "connection_failures": failures[0],
                      "fleet_rss_mib": round(fleet_rss / 2**20, 1), "gateway_rss_mib": round(gateway_rss / 2**20, 1),
                      "interval": args.interval, "summary": summary.get("message")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

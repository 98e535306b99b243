"""The reconnect storm alone: `held` subscribed devices connected and kept, then `storm` more arriving at
once (bench.conndriver, 64 handshakes in flight), as the full run measures it; plus the broker's CPU per
admitted connection. A few minutes instead of the full run's forty, so it can be run alternately.

    python -m bench.storm [--target edgegate|mosquitto|amqtt] [--held 2000] [--storm 5000] [--runs 1]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench.__main__ import FIRST_IDLE, TARGETS
from bench.load import device_id, ensure_device_files, open_connections
from bench.pki import BenchPKI


def one_run(target_name: str, held: int, storm: int) -> str:
    with tempfile.TemporaryDirectory(prefix="edgegate-storm-") as tmp:
        work = Path(tmp)
        pki = BenchPKI.create(work / "pki")
        ensure_device_files(pki, FIRST_IDLE + held + storm)
        target = TARGETS[target_name](target_name, pki, work)
        target.prepare([device_id(i) for i in range(FIRST_IDLE + held + storm)])
        target.start()
        kept = []
        try:
            time.sleep(1.0)
            kept.append(open_connections(target, pki, FIRST_IDLE, held, subscribe=True))
            cpu = target.cpu_seconds()
            arriving = open_connections(target, pki, FIRST_IDLE + held, storm, subscribe=True)
            kept.append(arriving)
            cpu = target.cpu_seconds() - cpu
            return (f"{target_name}: {arriving.admitted:,} arriving on {kept[0].admitted:,} held in "
                    f"{arriving.seconds:.1f} s = {arriving.admitted / arriving.seconds:,.0f} conn/s "
                    f"({arriving.refused} refused, {arriving.failed} failed); broker CPU "
                    f"{cpu / max(1, arriving.admitted) * 1e3:.2f} ms per connection")
        finally:
            for h in kept:
                h.close()
            target.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", default="edgegate", choices=sorted(TARGETS))
    parser.add_argument("--held", type=int, default=2000)
    parser.add_argument("--storm", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    for _ in range(args.runs):
        print(one_run(args.target, args.held, args.storm), flush=True)


if __name__ == "__main__":
    main()

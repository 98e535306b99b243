"""What an unauthenticated connection flood costs real devices: QoS 1 throughput of ten real
publishers (mosquitto_pub -l) without and during a flood of TLS connections with an unknown
device's certificate, medians of three runs each, against the in-process front door.

    python -m bench.flood_bench            # prints baseline, during-flood rate and their ratio
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gateway.frontdoor.limits import FrontDoorLimits
from gateway.pki import self_signed_device_cert
from tests import certmatrix
from tests.clients import DeviceFiles
from tests.frontdoor_harness import DictDirectory, FrontDoorThread
from tests.hubproc import REPO

DEVICES = {f"real-{i}": self_signed_device_cert(f"real-{i}") for i in range(10)}
INTRUDER = self_signed_device_cert("intruder")


def publish_rate(gw: FrontDoorThread, files: dict[str, DeviceFiles], per_device: int) -> float:
    lines = b"\n".join(b'{"t":21.5,"seq":%d}' % n for n in range(per_device)) + b"\n"
    start = time.monotonic()
    procs = [subprocess.Popen(
        ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(gw.port), "--cafile", str(gw.pki.root_path), "--cert",
         str(files[name].cert), "--key", str(files[name].key), "--insecure", "-i", name, "-q", "1", "-t",
         f"devices/{name}/messages/events/", "-l"], stdin=subprocess.PIPE) for name in DEVICES]
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(lines)
        proc.stdin.close()
    for proc in procs:
        proc.wait(120)
    return len(DEVICES) * per_device / (time.monotonic() - start)


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="edgegate-flood-"))
    files = {name: DeviceFiles.write(c, tmp, name) for name, c in DEVICES.items()}
    files["intruder"] = DeviceFiles.write(INTRUDER, tmp, "intruder")
    records = [certmatrix.ss_record(d, c.thumbprint_sha256) for d, c in DEVICES.items()]
    directory = DictDirectory(certmatrix.GATEWAY_ID, certmatrix.build().anchors, records)
    limits = FrontDoorLimits(max_connections=5000, handshake_timeout=2.0)
    with FrontDoorThread(tmp / "gw", directory, limits=limits) as gw:
        baseline = statistics.median(publish_rate(gw, files, 1000) for _ in range(3))
        flood = subprocess.Popen([sys.executable, "-m", "tests.hostile.flood", str(gw.port), str(gw.pki.root_path),
                                  str(files["intruder"].cert), str(files["intruder"].key), "--concurrency", "20"],
                                 cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert flood.stdout is not None
        flood.stdout.readline()
        time.sleep(1.0)
        try:
            during = statistics.median(publish_rate(gw, files, 1000) for _ in range(3))
        finally:
            out, _ = flood.communicate("", timeout=60)
    made, refused = (int(x) for x in out.split())
    print(f"baseline {baseline:,.0f} msg/s; during a flood of {made:,} unauthenticated connections "
          f"({refused:,} refused) {during:,.0f} msg/s; ratio {during / baseline:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Where the Python heap of an idle authenticated connection goes (tracemalloc, grouped by file).

    python -m bench.memprofile [N]

Runs the real front door and amqtt in this process, opens N subscribed device connections from the
connection driver process, and prints KiB per connection by source file.
"""

import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from bench.load import device_id, ensure_device_files
from bench.pki import BenchPKI
from gateway.records import AuthType, DeviceRecord, TrustAnchors
from tests import certmatrix
from tests.frontdoor_harness import DictDirectory, FrontDoorThread

w = Path(tempfile.mkdtemp(prefix="memprofile-"))
pki = BenchPKI.create(w / "pki")
N = int(sys.argv[1]) if len(sys.argv) > 1 else 500
ensure_device_files(pki, N)
records = [DeviceRecord(device_id(i), True, AuthType.CERTIFICATE_AUTHORITY, certmatrix.GATEWAY_ID) for i in range(N)]
d = DictDirectory(certmatrix.GATEWAY_ID, TrustAnchors(roots=(pki.root.cert,)), records)
with FrontDoorThread(w / "gw", d) as gw:
    tracemalloc.start(1)
    snap1 = tracemalloc.take_snapshot()
    p = subprocess.Popen([sys.executable, "-m", "bench.conndriver", str(gw.port), str(gw.pki.root_path),
                          str(pki.directory / "devices"), "0", str(N), "--subscribe"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    print(p.stdout.readline().strip())
    time.sleep(2)
    snap2 = tracemalloc.take_snapshot()
    stats = snap2.compare_to(snap1, "filename")
    total = sum(s.size_diff for s in stats)
    print("python heap per conn KiB", total / N / 1024)
    for s in stats[:30]:
        print(f"{s.size_diff / N / 1024:7.2f} KiB/conn  {s.traceback[0].filename}")
    assert p.stdin is not None
    p.stdin.close()
    p.wait()

"""The idle gateway's RSS with N devices in its cache: a real `edgegate run` and hub-mock, the scope synced,
nothing connected.

    python -m bench.idle_rss [N]    (default 2,000: the front-door issue's size)
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from bench.edgegate_target import EdgegateTarget
from bench.load import device_id
from bench.pki import BenchPKI


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    with tempfile.TemporaryDirectory(prefix="edgegate-idle-") as tmp:
        work = Path(tmp)
        pki = BenchPKI.create(work / "pki")
        pki.device_files("probe-0")
        target = EdgegateTarget("edgegate", pki, work)
        target.prepare([device_id(i) for i in range(count)] + ["probe-0"])
        target.start()  # returns once the whole scope is cached
        try:
            time.sleep(3)
            print(f"{count:,} devices cached: idle RSS {target.rss() / 2**20:.1f} MiB")
        finally:
            target.stop()


if __name__ == "__main__":
    main()

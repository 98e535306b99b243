"""EST enrollment cost against a real hub-mock EST server: one renewal as the gateway does it
(new P-256 key, CSR, simplereenroll over fresh mutual TLS, cacerts, checks, atomic 0600 writes).

    python -m bench.est_bench [N]
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from gateway.config import parse_config
from gateway.est.keeper import EstKeeper
from gateway.metrics import Counters
from tests.estproc import EstHub, est_config


def main(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp, EstHub.start_est(Path(tmp) / "hub") as hub:
        gw = Path(tmp) / "gw"
        text = est_config(hub, gw, edge_ca=False)
        config = parse_config(text, source=gw / "config.toml")
        assert config.est is not None
        keeper = EstKeeper(config, config.est, lambda: datetime.now(UTC), Counters())
        asyncio.run(keeper.obtain(keeper.identity))  # the bootstrap enrollment
        times = []
        for _ in range(n):
            start = time.perf_counter()
            asyncio.run(keeper.obtain(keeper.identity))  # simplereenroll with the identity
            keeper.identity.store.confirm()
            times.append((time.perf_counter() - start) * 1000)
        print(f"EST renewal (simplereenroll, new key, fresh TLS, cacerts, files): n={n} "
              f"median {statistics.median(times):.1f} ms, p90 {sorted(times)[int(n * 0.9) - 1]:.1f} ms")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 50)

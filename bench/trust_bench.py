"""Trust-over-time costs (not a test), in process:

- the clock watch's time, asked for every decision (`now()`) and every message (`epoch()`), against
  `time.time()`;
- one pass of the session sweep over N live sessions (each session's deadline is cached);
- the check after a CA removal over N sessions, half of them chained to the removed CA.

    .venv/bin/python -m bench.trust_bench [--sessions 10000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from gateway.auth.live import LiveSession, anchor_lost_sessions
from gateway.clock_watch import ClockWatch
from gateway.metrics import Counters
from gateway.pki import CA, thumbprint_sha1, thumbprint_sha256
from gateway.records import PeerIdentity, TrustAnchors
from gateway.session_sweep import SessionSweep


def us_per_call(fn: Callable[[], object], calls: int = 200_000) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


def sessions_under(removed: CA, kept: CA, count: int) -> list[LiveSession]:
    removed_inter, kept_inter = removed.create_child_ca("removed inter"), kept.create_child_ca("kept inter")
    out: list[LiveSession] = []
    for i in range(count):
        issuer = removed_inter if i % 2 else kept_inter
        device = issuer.issue_device_cert(f"d{i}")
        peer = PeerIdentity((device.cert, issuer.cert), thumbprint_sha256(device.cert), thumbprint_sha1(device.cert))
        out.append((f"d{i}", peer))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=10_000)
    args = parser.parse_args()

    watch = ClockWatch(Path(tempfile.mkdtemp()), tolerance=timedelta(minutes=5))
    watch.hub_date(datetime.now(UTC))
    print(f"time.time()          {us_per_call(time.time):6.2f} µs")
    print(f"ClockWatch.epoch()   {us_per_call(watch.epoch):6.2f} µs   (per message)")
    print(f"ClockWatch.now()     {us_per_call(watch.now):6.2f} µs   (per decision)")
    print(f"ClockWatch.check()   {us_per_call(watch.check, 20_000):6.2f} µs   (judging afresh: after a step)")

    removed, kept = CA.create_root("removed", path_length=1), CA.create_root("kept", path_length=1)
    sessions = sessions_under(removed, kept, args.sessions)
    sweep = SessionSweep(lambda: sessions, lambda _d, _r: True, clock=lambda: datetime.now(UTC),
                         skew=timedelta(seconds=30), counters=Counters())
    sweep.sweep()
    passes = 20
    start = time.perf_counter()
    for _ in range(passes):
        sweep.sweep()
    print(f"sweep, {args.sessions} sessions   {(time.perf_counter() - start) / passes * 1000:6.2f} ms per pass")
    start = time.perf_counter()
    ends = anchor_lost_sessions(sessions, TrustAnchors((removed.cert, kept.cert)), TrustAnchors((kept.cert,)),
                                datetime.now(UTC))
    print(f"CA removed, {args.sessions} sessions   {time.perf_counter() - start:6.3f} s "
          f"({len(ends)} closed; run on a worker thread)")


if __name__ == "__main__":
    main()

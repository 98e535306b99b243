"""What durable telemetry costs the disk: bytes written per acknowledged message (the broker's
/proc/<pid>/io write_bytes, i.e. pages it dirtied) and fdatasync + fsync calls per second (counted by
`perf stat` on the syscall tracepoints, no ptrace), at a fleet's trickle (bench.fleet: N devices x 1 msg/s,
PUBACK latency timed) and at one fast publisher (mosquitto_pub -l).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from bench.fleet import drive
from bench.load import publish_rate
from bench.pki import BenchPKI
from bench.targets import Target

SYNC_EVENTS = "syscalls:sys_enter_fdatasync,syscalls:sys_enter_fsync"


def write_bytes(pid: int) -> int:
    """Bytes the process and its children sent (or will send) to storage: /proc/<pid>/io write_bytes."""
    proc = psutil.Process(pid)
    return sum(int(p.io_counters().write_bytes) for p in [proc, *proc.children(recursive=True)])


@dataclass
class DiskMeter:
    """write_bytes and sync calls of one process between `start()` and `stop()`."""

    pid: int
    perf: subprocess.Popen[str] | None = None
    started_bytes: int = 0
    started_at: float = 0.0
    output: Path | None = None

    def start(self, workdir: Path) -> DiskMeter:
        self.output = workdir / f"perf-{self.pid}.csv"
        if shutil.which("perf"):
            self.perf = subprocess.Popen(["perf", "stat", "-x", ",", "-e", SYNC_EVENTS, "-p", str(self.pid),
                                          "-o", str(self.output)], stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL, text=True)
            time.sleep(0.5)  # perf attaches
        self.started_bytes, self.started_at = write_bytes(self.pid), time.monotonic()
        return self

    def stop(self) -> tuple[int, float, float]:
        """(bytes written, sync calls per second or -1 when perf is unavailable, seconds)."""
        written, seconds = write_bytes(self.pid) - self.started_bytes, time.monotonic() - self.started_at
        syncs = -1.0
        if self.perf is not None and self.output is not None:
            self.perf.send_signal(signal.SIGINT)
            self.perf.wait(10)
            counts = [line.split(",")[0] for line in self.output.read_text().splitlines()
                      if "syscalls:sys_enter" in line]
            if counts and all(c.strip().isdigit() for c in counts):
                syncs = sum(int(c) for c in counts) / seconds
        return written, syncs, seconds


def fleet(target: Target, pki: BenchPKI, first: int, count: int, seconds: float,
          payload: int = 100) -> dict[str, float]:
    """N devices x 1 msg/s for `seconds`: bytes/message, sync calls/s, PUBACK p50/p99 (ms), and the broker's
    CPU per message when every message arrives in a read of its own (a real fleet's pattern)."""
    pid = target.proc.pid
    meter, cpu_before = DiskMeter(pid), [0.0]

    def start() -> None:  # once the fleet is in: its handshakes are not what this measures
        meter.start(target.workdir)
        cpu_before[0] = target.cpu_seconds()

    result = drive(target.port, pki.root_path, pki.directory / "devices", first, count, seconds, payload=payload,
                   connected=start)
    cpu = target.cpu_seconds() - cpu_before[0]
    written, syncs, _ = meter.stop()
    acked = max(1, int(result["acked"]))
    return {"bytes_per_msg": written / acked, "syncs_per_s": syncs, "cpu_us": cpu / acked * 1e6,
            "p50_ms": result["p50_ms"],
            "p99_ms": result["p99_ms"], "acked": acked, "sent": result["sent"]}


def fast_publisher(target: Target, messages: int) -> dict[str, float]:
    """One mosquitto_pub -l at QoS 1: bytes/message, sync calls/s, msg/s."""
    assert target.proc is not None
    meter = DiskMeter(target.proc.pid).start(target.workdir)
    rate = publish_rate(target, [0], messages, 1)
    time.sleep(0.2)  # the last commit
    written, syncs, _ = meter.stop()
    return {"bytes_per_msg": written / messages, "syncs_per_s": syncs, "rate": rate}

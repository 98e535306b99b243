"""Load generators: Mosquitto's own C client (`mosquitto_pub -l`) for messages, and the Python
connection driver (bench.conndriver) for admission storms and idle connections."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass

from bench.pki import BenchPKI
from bench.targets import REPO, Target

PAYLOAD = b'{"temperature":21.53,"humidity":48.1,"seq":%d,"ts":"2026-11-22T12:00:00Z"}'


def device_id(i: int) -> str:
    return f"dev-{i:05d}"


def _pub_command(target: Target, i: int, qos: int) -> list[str]:
    cert, key = target.pki.device_files(device_id(i))
    return ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(target.port), "--cafile", str(target.pki.root_path),
            "--cert", str(cert), "--key", str(key), "--insecure", "-i", device_id(i), "-q", str(qos),
            "-t", f"devices/{device_id(i)}/messages/events/", "-l"]


def publish_rate_and_cpu(target: Target, publishers: list[int], messages: int, qos: int) -> tuple[float, float]:
    """(msg/s, the broker's CPU microseconds per message) for one `publish_rate` load."""
    before = target.cpu_seconds()
    rate = publish_rate(target, publishers, messages, qos)
    sent = messages // len(publishers) * len(publishers)
    return rate, (target.cpu_seconds() - before) / sent * 1e6


def publish_rate(target: Target, publishers: list[int], messages: int, qos: int) -> float:
    """Aggregate msg/s of `len(publishers)` `mosquitto_pub -l` processes sending `messages` in all."""
    each = messages // len(publishers)
    if each >= 65535:
        # mosquitto_pub -l stops at the first PUBACK carrying its last message id, and ids wrap at 65535:
        # it would exit 0 having sent a fraction of the messages.
        raise ValueError(f"at most 65,534 messages per mosquitto_pub, not {each:,}: add publishers")
    lines = b"\n".join(PAYLOAD % n for n in range(each)) + b"\n"
    procs = []
    start = time.monotonic()
    for i in publishers:
        proc = subprocess.Popen(_pub_command(target, i, qos), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        procs.append(proc)
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(lines)
        proc.stdin.close()
    for proc in procs:
        if proc.wait(600) != 0:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"mosquitto_pub against {target.name} failed: {err.strip()}")
    return each * len(publishers) / (time.monotonic() - start)


@dataclass
class HeldConnections:
    """Connections opened by the driver process and held until `close()`."""

    proc: subprocess.Popen[str]
    admitted: int
    refused: int
    failed: int
    seconds: float

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(60)


def open_connections(target: Target, pki: BenchPKI, first: int, count: int, *, subscribe: bool = False,
                     concurrency: int = 64) -> HeldConnections:
    for i in range(first, first + count):
        pki.device_files(device_id(i))
    cmd = [sys.executable, "-m", "bench.conndriver", str(target.port), str(pki.root_path),
           str(pki.directory / "devices"), str(first), str(count), "--concurrency", str(concurrency)]
    if subscribe:
        cmd.append("--subscribe")
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"connection driver against {target.name} died")
    result = json.loads(line)
    return HeldConnections(proc, result["admitted"], result["refused"], result["failed"], result["seconds"])


def ensure_device_files(pki: BenchPKI, count: int) -> None:
    for i in range(count):
        pki.device_files(device_id(i))



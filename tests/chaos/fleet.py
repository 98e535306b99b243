"""A TempSensor fleet (the real `tempsensor --fleet` process) and what it saw: acknowledged readings
per device, connections, refusals."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

from gateway.pki import IssuedCert, self_signed_device_cert
from tests.clients import DeviceFiles
from tests.gatewayproc import GATEWAY_ID
from tests.hubproc import HubProcess


def make_fleet(hub: HubProcess, directory: Path, count: int, prefix: str = "fleet") -> dict[str, IssuedCert]:
    certs = {}
    for i in range(count):
        device_id = f"{prefix}-{i:03d}"
        cert = self_signed_device_cert(device_id)
        hub.admin.add_device(device_id, parent=GATEWAY_ID, thumbprint=cert.thumbprint_sha256)
        DeviceFiles.write(cert, directory, device_id)
        certs[device_id] = cert
    return certs


class Fleet:
    def __init__(self, port: int, ca: Path, fleet_dir: Path, count: int, interval: float = 0.1) -> None:
        self.acked: dict[str, list[int]] = defaultdict(list)
        self.connected: set[str] = set()
        self.refusals: list[dict[str, object]] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "devices.cli", "--gateway-hostname", "edgegateway.local", "--connect-address",
             "127.0.0.1", "--port", str(port), "--ca-file", str(ca), "--fleet", str(count), "--fleet-dir",
             str(fleet_dir), "--interval", str(interval), "--json-log", "--retry-forever"],
            stdout=subprocess.PIPE, text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            event = json.loads(line)
            device = str(event["device"])
            if event["event"] == "acked":
                self.acked[device].append(int(event["seq"]))
            elif event["event"] == "connected":
                self.connected.add(device)
            elif event["event"] == "refused":
                self.refusals.append(event)

    def wait_connected(self, count: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while len(self.connected) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"only {len(self.connected)} of {count} sensors connected")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._reader.join(5)

"""`tempsensor --fleet 2000` in one process against a real gateway: all connected, all publishing."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.bigfleet import make_big_fleet
from tests.hubproc import REPO, HubProcess
from tests.serviceproc import ServiceGateway

pytestmark = pytest.mark.integration

SENSORS = 2000


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubProcess]:
    with HubProcess.start(tmp_path / "hub") as running:
        yield running


def test_a_small_fleet_with_a_count_finishes_by_itself(tmp_path: Path, hub: HubProcess) -> None:
    gw = ServiceGateway.launch(tmp_path / "gw", hub, args=("--log-level", "WARNING"))
    try:
        make_big_fleet(hub, tmp_path / "fleet", 5)
        deadline = time.monotonic() + 60
        while gw.status().get("sync", {}).get("cached_devices") != 5:  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "the gateway did not cache the fleet"
            time.sleep(0.2)
        done = subprocess.run(
            [sys.executable, "-m", "devices.cli", "--gateway-hostname", "edgegateway.local", "--connect-address",
             "127.0.0.1", "--port", str(gw.port), "--ca-file", str(gw.root), "--fleet", "5", "--fleet-dir",
             str(tmp_path / "fleet"), "--interval", "0", "--count", "30", "--json-log"],
            cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        events = [json.loads(line) for line in done.stdout.splitlines()]
        assert sum(e["event"] == "done" for e in events) == 5
        assert sum(e["event"] == "acked" for e in events) == 150
        (summary,) = [e for e in events if e["event"] == "summary"]
        assert (summary["connected"], summary["acked"]) == (5, 150)
    finally:
        assert gw.stop() == 0


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_fleet_of_2000_sensors_in_one_process(tmp_path: Path, hub: HubProcess) -> None:
    gw = ServiceGateway.launch(tmp_path / "gw", hub, args=("--log-level", "WARNING"))
    try:
        make_big_fleet(hub, tmp_path / "fleet", SENSORS)
        deadline = time.monotonic() + 180
        while gw.status().get("sync", {}).get("cached_devices") != SENSORS:  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "the gateway did not cache the fleet"
            time.sleep(0.5)
        # A reading every 10 s keeps the run light: the point is 2,000 connections publishing, not load.
        proc = subprocess.Popen(
            [sys.executable, "-m", "devices.cli", "--gateway-hostname", "edgegateway.local", "--connect-address",
             "127.0.0.1", "--port", str(gw.port), "--ca-file", str(gw.root), "--fleet", str(SENSORS),
             "--fleet-dir", str(tmp_path / "fleet"), "--interval", "10", "--json-log"],
            cwd=REPO, stdout=subprocess.PIPE, text=True,
        )
        connected: set[str] = set()
        acked: set[str] = set()
        summary: dict[str, object] = {}
        failures: list[str] = []

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                event = json.loads(line)
                if event["event"] == "connected":
                    connected.add(event["device"])
                elif event["event"] == "acked":
                    acked.add(event["device"])
                elif event["event"] == "summary":
                    summary.update(event)
                elif event["event"] in ("connect_failed", "refused", "disconnected"):
                    failures.append(line)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        deadline = time.monotonic() + 600
        while len(acked) < SENSORS:
            assert proc.poll() is None, "the fleet process ended"
            assert time.monotonic() < deadline, (f"{len(connected)} connected, {len(acked)} publishing; "
                                                 f"failures: {failures[:5]}")
            time.sleep(0.5)
        assert len(connected) == SENSORS
        while gw.status()["connected_devices"] != SENSORS:  # status.json is rewritten every 2 s
            assert time.monotonic() < deadline, f"the gateway says {gw.status()['connected_devices']} connected"
            time.sleep(0.5)
        assert not failures, failures[:5]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(120) == 0
        reader.join(10)
        assert summary["connected"] == SENSORS
        assert summary["acked"] >= SENSORS  # type: ignore[operator]
        assert set(summary["latency_ms"]) == {"p50", "p90", "p99", "max"}  # type: ignore[arg-type]
    finally:
        assert gw.stop() == 0

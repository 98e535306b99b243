"""The real `tempsensor` CLI against the real gateway and hub processes."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.pki import self_signed_device_cert
from tests.clients import DeviceFiles
from tests.gatewayproc import GATEWAY_ID, GatewayProcess
from tests.hubproc import HubProcess

pytestmark = pytest.mark.integration
TEMPSENSOR = [sys.executable, "-m", "devices.cli"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[HubProcess, GatewayProcess]]:
    tmp = tmp_path_factory.mktemp("stack")
    with HubProcess.start(tmp / "hub") as hub, GatewayProcess.start(tmp / "gw", hub) as gw:
        gw.wait_synced()
        yield hub, gw


def run_sensor(gw: GatewayProcess, files: DeviceFiles, *extra: str, hostname: str = "edgegateway.local",
               ca: Path | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [*TEMPSENSOR, "--gateway-hostname", hostname, "--connect-address", "127.0.0.1", "--port", str(gw.port),
           "--ca-file", str(ca or gw.root), "--cert", str(files.cert), "--key", str(files.key), "--interval", "0.02",
           "--json-log", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def test_readings_reach_the_hub_as_json(stack: tuple[HubProcess, GatewayProcess], tmp_path: Path) -> None:
    hub, gw = stack
    files = DeviceFiles.write(gw.register_self_signed("TempSensor"), tmp_path, "TempSensor")
    done = run_sensor(gw, files, "--count", "5")
    assert done.returncode == 0, done.stdout + done.stderr
    acked = [json.loads(line)["seq"] for line in done.stdout.splitlines() if '"acked"' in line]
    assert acked == [1, 2, 3, 4, 5]
    deadline = time.monotonic() + 10
    while len(hub.admin.messages("TempSensor")["messages"]) < 5 and time.monotonic() < deadline:
        time.sleep(0.1)
    bodies = [json.loads(base64.b64decode(m["payload_b64"])) for m in hub.admin.messages("TempSensor")["messages"]]
    assert [b["seq"] for b in bodies] == [1, 2, 3, 4, 5]
    assert all(set(b) == {"temperature", "humidity", "seq", "ts"} for b in bodies)


def test_wrong_hostname_is_explained(stack: tuple[HubProcess, GatewayProcess], tmp_path: Path) -> None:
    _, gw = stack
    files = DeviceFiles.write(gw.register_self_signed("ts-host"), tmp_path, "ts-host")
    done = run_sensor(gw, files, "--count", "1", hostname="other.local")
    assert done.returncode == 3
    assert "the gateway's certificate is for edgegateway.local, 127.0.0.1, you dialled other.local" in done.stdout


def test_untrusted_chain_is_explained(stack: tuple[HubProcess, GatewayProcess], tmp_path: Path) -> None:
    hub, gw = stack
    files = DeviceFiles.write(gw.register_self_signed("ts-ca"), tmp_path, "ts-ca")
    done = run_sensor(gw, files, "--count", "1", ca=hub.hub_root)
    assert done.returncode == 3
    assert "the gateway's chain does not lead to a root in ca-file" in done.stdout


def test_unregistered_device_is_told_it_is_not_authorized(stack: tuple[HubProcess, GatewayProcess],
                                                          tmp_path: Path) -> None:
    _, gw = stack
    files = DeviceFiles.write(self_signed_device_cert("ts-stranger"), tmp_path, "ts-stranger")
    done = run_sensor(gw, files, "--count", "1")
    assert done.returncode == 3
    assert "not authorized" in done.stdout


def test_fleet_and_cloud_to_device(stack: tuple[HubProcess, GatewayProcess], tmp_path: Path) -> None:
    hub, gw = stack
    fleet = tmp_path / "fleet"
    for i in range(5):
        device_id = f"fleet-{i}"
        cert = self_signed_device_cert(device_id)
        hub.admin.add_device(device_id, parent=GATEWAY_ID, thumbprint=cert.thumbprint_sha256)
        DeviceFiles.write(cert, fleet, device_id)
    cmd = [*TEMPSENSOR, "--gateway-hostname", "edgegateway.local", "--connect-address", "127.0.0.1", "--port",
           str(gw.port), "--ca-file", str(gw.root), "--fleet", "5", "--fleet-dir", str(fleet), "--interval", "0.2",
           "--count", "15", "--json-log"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    seen_connected: set[str] = set()
    for line in proc.stdout:
        event = json.loads(line)
        if event["event"] == "connected":
            seen_connected.add(event["device"])
            if len(seen_connected) == 5:
                time.sleep(0.3)
                hub.admin.send_c2d("fleet-3", b"calibrate")
        if event["event"] == "c2d":
            assert event["device"] == "fleet-3"
            assert event["payload"] == "calibrate"
            break
    proc.communicate(timeout=60)
    assert proc.returncode == 0
    for i in range(5):
        assert len(hub.admin.messages(f"fleet-{i}")["messages"]) >= 1

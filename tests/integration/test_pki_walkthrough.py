"""docs/PKI_TO_HUB.md, step by step, with the real commands (free ports instead of 8443/8444/8883)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.pki import load_certs, thumbprint_sha256
from tests.hubproc import REPO, run_cli

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent


def edgegate(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(BIN / "edgegate"), *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done


def wait_file(path: Path, proc: subprocess.Popen[bytes], log: Path) -> dict[str, object]:
    deadline = time.monotonic() + 30
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{path.name} never appeared:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
    return dict(json.loads(path.read_text()))


@pytest.mark.timeout(180)
def test_the_walkthrough(tmp_path: Path) -> None:
    work = tmp_path
    # 1. The PKI.
    edgegate("certs", "create-root-and-intermediate", cwd=work)
    edgegate("certs", "create-edge-ca", "my-edge-ca", cwd=work)
    edgegate("certs", "create-identity", "edge-gw-1", cwd=work)
    edgegate("certs", "create-device", "sensor-1", cwd=work)
    identity = work / "certs" / "edge-gw-1.identity.cert.pem"
    assert len(load_certs(identity)) == 2  # the chain file that hub-mock used to refuse

    # 2. The hub.
    done = run_cli("init", "--dir", str(work / "hub"), "--hostname", "hub.local", "--gateway-ca",
                   str(work / "certs" / "root.cert.pem"), "--api-port", "0", "--admin-port", "0")
    assert done.returncode == 0, done.stderr
    hub_log = work / "hub.log"
    hub = subprocess.Popen([sys.executable, "-m", "hub_mock", "run", "-c", str(work / "hub" / "hub.toml"),
                            "--ready-file", str(work / "hub-ready.json")],
                           cwd=REPO, stdout=hub_log.open("wb"), stderr=subprocess.STDOUT)
    gateway: subprocess.Popen[bytes] | None = None
    try:
        ports = wait_file(work / "hub-ready.json", hub, hub_log)
        env = {"HUB_MOCK_ADMIN_URL": str(ports["admin_url"])}
        done = run_cli("gateways", "add", "edge-gw-1", "--cert", str(identity), env=env)
        assert done.returncode == 0, done.stderr
        assert "holds 2 certificates; registering the first, the identity certificate CN=edge-gw-1" in done.stderr
        assert thumbprint_sha256(load_certs(identity)[0]) in done.stdout
        done = run_cli("ca", "add", "devices", str(work / "certs" / "intermediate.cert.pem"), env=env)
        assert done.returncode == 0, done.stderr
        done = run_cli("devices", "add", "sensor-1", "--parent", "edge-gw-1", "--ca", env=env)
        assert done.returncode == 0, done.stderr

        # 3. The gateway.
        (work / "config.toml").write_text(
            'hostname = "edgegateway.local"\nalt_names = ["127.0.0.1"]\ntrust_bundle_cert = "certs/root.cert.pem"\n'
            'state_dir = "state"\n\n[edge_ca]\ncert = "certs/my-edge-ca.cert.pem"\npk = "certs/my-edge-ca.key.pem"\n\n'
            '[listener]\nbind = "127.0.0.1"\nport = 0\n\n'
            f'[hub]\nhostname = "hub.local"\nurl = "https://127.0.0.1:{ports["api_port"]}"\n'
            'gateway_id = "edge-gw-1"\nidentity_cert = "certs/edge-gw-1.identity.cert.pem"\n'
            'identity_pk = "certs/edge-gw-1.identity.key.pem"\ntrust_bundle_cert = "hub/hub-root.pem"\n'
        )
        checked = subprocess.run([str(BIN / "edgegate"), "check", "-c", "config.toml"], cwd=work,
                                 capture_output=True, text=True, timeout=60)
        assert checked.returncode == 0, checked.stdout
        gw_log = work / "gateway.log"
        gateway = subprocess.Popen([str(BIN / "edgegate"), "run", "-c", "config.toml", "--ready-file", "gw-ready.json"],
                                   cwd=work, stdout=gw_log.open("wb"), stderr=subprocess.STDOUT)
        port = wait_file(work / "gw-ready.json", gateway, gw_log)["port"]

        # 4. The device.
        sensor = subprocess.run(
            [str(BIN / "tempsensor"), "--gateway-hostname", "edgegateway.local", "--connect-address", "127.0.0.1",
             "--port", str(port), "--ca-file", "certs/root.cert.pem", "--cert", "certs/sensor-1.cert.pem",
             "--key", "certs/sensor-1.key.pem", "--count", "3", "--retry-forever"],
            cwd=work, capture_output=True, text=True, timeout=90,
        )
        assert sensor.returncode == 0, sensor.stdout + sensor.stderr + gw_log.read_text()[-3000:]
        deadline = time.monotonic() + 30
        while True:
            listed = run_cli("messages", "--device", "sensor-1", "--json", env=env)
            if json.loads(listed.stdout)["total"] == 3 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert json.loads(listed.stdout)["total"] == 3
    finally:
        for proc in (gateway, hub):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(15)

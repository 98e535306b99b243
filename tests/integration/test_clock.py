"""A gateway whose clock is wrong, as a Raspberry Pi without a battery boots: a real `edgegate run` under
libfaketime (tests/faketime.py), a real hub-mock and real devices with a correct clock.

The gateway first ran 25 days ago (its quickstart PKI dates from then, so its server certificate is due
for renewal in real time). It then boots 40 days (or two years) behind: it must not replace a single
certificate, must keep admitting devices whose clock is right, and once NTP corrects the clock it must
renew the due server certificate within a minute. Booting 40 days *ahead* must not produce a server
certificate that is "not yet valid" for devices whose clock is right.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from gateway.pki import CA, IssuedCert, load_certs, self_signed_device_cert
from tests.clients import DeviceFiles, PahoDevice
from tests.faketime import FakeClock
from tests.gatewayproc import GATEWAY_ID, HOSTNAME, GatewayProcess
from tests.hubproc import HubProcess

pytestmark = pytest.mark.integration

DAY = timedelta(days=1)


def wait_for(cond: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubProcess]:
    """A hub whose certificates are years old, like IoT Hub's: a gateway two years behind can still
    verify it (the point here is the gateway's own certificates, not the hub's)."""
    hub = HubProcess.start(tmp_path / "hub")
    now = datetime.now(UTC)
    root = CA.create_root("hub-mock root", not_before=now - 1000 * DAY, not_after=now + 1000 * DAY)
    server = root.issue_server_cert(hub.hostname, "localhost", "127.0.0.1", not_before=now - 1000 * DAY,
                                    not_after=now + 900 * DAY)
    root.cert_pem.write_to_path(hub.hub_root)
    server.fullchain_pem().write_to_path(hub.directory / "server.pem")
    server.private_key_pem.write_to_path(hub.directory / "server.key", private=True)
    hub.restart()
    yield hub
    hub.stop()


def pki_files(gw: GatewayProcess) -> dict[str, bytes]:
    return pki_files_at(gw.directory)


def pki_files_at(directory: Path) -> dict[str, bytes]:
    pki = directory / "state" / "pki"
    return {p.name: p.read_bytes() for p in (pki / "quickstart-root.pem", pki / "edge-ca.pem",
                                              pki / "server" / "server.pem")}


def server_cert(gw: GatewayProcess) -> x509.Certificate:
    return load_certs(gw.state_dir / "pki" / "server" / "server.pem")[0]


def ran_before(directory: Path, offset: str) -> None:
    """The gateway's earlier life: started (and stopped) with its clock at `offset`, no hub."""
    clock = FakeClock(directory / "faketime", offset)
    first = GatewayProcess.start(directory / "gw", None, env=clock.env())
    first.stop()


def device(hub: HubProcess, device_id: str, tmp: Path) -> tuple[IssuedCert, DeviceFiles]:
    """A thumbprint device whose certificate dates from two months ago, registered under the gateway."""
    now = datetime.now(UTC)
    cert = self_signed_device_cert(device_id, not_before=now - 60 * DAY, not_after=now + 300 * DAY)
    hub.admin.add_device(device_id, parent=GATEWAY_ID, thumbprint=cert.thumbprint_sha256)
    return cert, DeviceFiles.write(cert, tmp, device_id)


def connack(gw: GatewayProcess, device_id: str, files: DeviceFiles) -> object:
    """The CONNACK a device with a correct clock gets (it verifies the gateway's chain at the real time)."""
    paho = PahoDevice(gw.port, gw.root, device_id, files)
    try:
        return paho.connect()
    finally:
        paho.close()


@pytest.mark.timeout(240)
@pytest.mark.parametrize("behind", ["-40d", "-730d"], ids=["40 days behind", "two years behind"])
def test_boot_behind_then_ntp_corrects(behind: str, hub: HubProcess, tmp_path: Path) -> None:
    ran_before(tmp_path, "-25d")
    before = pki_files_at(tmp_path / "gw")
    clock = FakeClock(tmp_path / "faketime", behind)
    gw = GatewayProcess.start(tmp_path / "gw", hub, env=clock.env())
    try:
        assert pki_files(gw) == before, "a certificate was replaced at start on a clock that is behind"
        gw.wait_log("NTP not synced?")
        gw.wait_synced()
        _, files = device(hub, "sensor-1", tmp_path)
        wait_for(lambda: connack(gw, "sensor-1", files) == 0, 20, "a device with a correct clock to be admitted")
        status = gw.status()["clock"]
        assert isinstance(status, dict)
        assert status["state"] == "behind", status
        assert "behind" in str(status["message"])
        # `edgegate status` on the same machine reads the same wrong clock.
        shown = subprocess.run([sys.executable, "-m", "gateway.cli.main", "status", "-c", str(gw.config_path)],
                               capture_output=True, text=True, timeout=60, env={**os.environ, **clock.env()}).stdout
        assert "clock        ⚠ behind: the system clock is " in shown, shown
        assert pki_files(gw) == before, "a certificate was replaced while the clock was wrong"

        corrected_at = time.monotonic()
        clock.set("+0")
        wait_for(lambda: pki_files(gw)["server.pem"] != before["server.pem"], 60,
                 "the due server certificate to be renewed after the clock was corrected")
        print(f"renewed {time.monotonic() - corrected_at:.1f} s after the correction")
        renewed = server_cert(gw)
        now = datetime.now(UTC)
        assert renewed.not_valid_before_utc <= now <= renewed.not_valid_after_utc
        assert renewed.not_valid_after_utc > now + 25 * DAY
        gw.wait_log("the system clock is trusted again")
        assert pki_files(gw)["quickstart-root.pem"] == before["quickstart-root.pem"]
        assert connack(gw, "sensor-1", files) == 0
    finally:
        gw.stop()


def handshake_chain(port: int, root: Path) -> x509.Certificate:
    """The server certificate of a TLS handshake verified against `root` at the real time."""
    ctx = ssl.create_default_context(cafile=str(root))
    ctx.check_hostname = False
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname=HOSTNAME) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


@pytest.mark.timeout(120)
def test_boot_ahead_issues_nothing_not_yet_valid(tmp_path: Path) -> None:
    ran_before(tmp_path, "+0")
    held = pki_files_at(tmp_path / "gw")
    clock = FakeClock(tmp_path / "faketime", "+40d")
    gw = GatewayProcess.start(tmp_path / "gw", None, env=clock.env())
    try:
        # Its server certificate looks expired to a clock 40 days ahead, so it issues a new one (the
        # checks below would fail on a certificate dated from that clock); that one must be valid right
        # now for a device whose clock is right.
        gw.wait_log("issued server certificate")
        wait_for(lambda: (gw.state_dir / "status.json").exists(), 10, "status.json")
        wall = datetime.fromisoformat(str(gw.status()["clock"]["wall"]))  # type: ignore[index]
        assert wall > datetime.now(UTC) + 39 * DAY, "the gateway's clock was not 40 days ahead"
        assert pki_files(gw)["server.pem"] != held["server.pem"]
        cert = handshake_chain(gw.port, gw.root)
        now = datetime.now(UTC)
        assert cert.not_valid_before_utc <= now, cert.not_valid_before_utc
        assert now < cert.not_valid_after_utc
    finally:
        gw.stop()


@pytest.mark.timeout(120)
def test_a_tempsensor_with_a_wrong_clock_names_the_clock_and_keeps_trying(tmp_path: Path) -> None:
    gw = GatewayProcess.start(tmp_path / "gw", None)
    cert = self_signed_device_cert("TempSensor")
    files = DeviceFiles.write(cert, tmp_path, "TempSensor")
    clock = FakeClock(tmp_path / "sensor-clock", "-40d")
    tempsensor = str(Path(sys.executable).with_name("tempsensor"))
    proc = subprocess.Popen(
        [tempsensor, "--gateway-hostname", HOSTNAME, "--connect-address", "127.0.0.1", "--port", str(gw.port),
         "--ca-file", str(gw.root), "--cert", str(files.cert), "--key", str(files.key), "--json-log"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, **clock.env()},
    )
    try:
        assert proc.stdout is not None
        failed: dict[str, object] = {}
        for line in proc.stdout:
            event = json.loads(line)
            if event["event"] == "connect_failed":
                failed = event
                break
        assert failed["reason"] == "gateway_cert_not_yet_valid", failed
        assert "this device's clock says" in str(failed["message"])
        assert "check the clock" in str(failed["message"])
        assert failed["fatal"] is False
        assert json.loads(proc.stdout.readline())["event"] == "retry"  # not "gave_up": a clock gets corrected
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(10)
        gw.stop()


@pytest.mark.timeout(180)
def test_messages_taken_while_behind_survive_the_correction(hub: HubProcess, tmp_path: Path) -> None:
    """Stamped with a clock 40 days behind, buffered messages would all be 40 days past their time-to-live
    the moment NTP corrects the clock: the gateway stamps them with the time it acts on instead."""
    ran_before(tmp_path, "+0")
    clock = FakeClock(tmp_path / "faketime", "-40d")
    gw = GatewayProcess.start(tmp_path / "gw", hub, env=clock.env())
    try:
        gw.wait_synced()
        _, files = device(hub, "buffered", tmp_path)
        paho = PahoDevice(gw.port, gw.root, "buffered", files)
        wait_for(lambda: paho.connect() == 0, 20, "admission")
        try:
            hub.admin.fault("down")
            for n in range(3):
                assert paho.publish("devices/buffered/messages/events/", f'{{"n": {n}}}'.encode())
        finally:
            paho.close()
        clock.set("+0")
        gw.wait_log("the system clock is trusted again", timeout=60)
        hub.admin.fault("up")
        wait_for(lambda: hub.admin.messages("buffered")["total"] == 3, 60, "the buffered messages at the hub")
        stamps = [datetime.fromisoformat(m["enqueued_time"].replace("Z", "+00:00"))
                  for m in hub.admin.messages("buffered")["messages"]]
        assert all(abs(datetime.now(UTC) - stamp) < timedelta(minutes=10) for stamp in stamps), stamps
    finally:
        gw.stop()

"""A gateway whose certificates come from EST (hub-mock's EST server, real processes, real TLS).

Lifetimes are seconds-scale in the EST policy (no clock faking): renewal, EST outages across the
threshold and past expiry, and recovery happen in real time.
"""

from __future__ import annotations

import base64
import re
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tests.clients import DeviceFiles, PahoDevice
from tests.estproc import EstGateway, EstHub
from tests.gatewayproc import GATEWAY_ID, HOSTNAME
from tests.hubproc import REPO

pytestmark = pytest.mark.integration


def wait_for(cond: Callable[[], object], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def payloads(hub: EstHub, device_id: str) -> list[bytes]:
    page = hub.admin.messages(device_id, limit=1000)
    return [base64.b64decode(m["payload_b64"]) for m in page["messages"]]


def wire_chain(port: int, root: Path) -> tuple[list[str], str]:
    """What a device sees: openssl s_client's chain (subject, serial-bearing PEMs) and verify result."""
    done = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", HOSTNAME, "-CAfile", str(root),
         "-verify_hostname", HOSTNAME, "-showcerts"],
        input="", capture_output=True, text=True, timeout=20,
    )
    pems = re.findall(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", done.stdout, re.DOTALL)
    verify = re.search(r"Verify return code: (\d+ \([^)]*\))", done.stdout)
    return pems, verify[1] if verify else done.stdout[-500:]


def public_key(pem: str | bytes) -> bytes:
    cert = x509.load_pem_x509_certificate(pem.encode() if isinstance(pem, str) else pem)
    return cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def sensor(gw: EstGateway, hub: EstHub, tmp: Path, device_id: str) -> PahoDevice:
    cert = gw.register_self_signed(device_id)
    files = DeviceFiles.write(cert, tmp / "devices", device_id)
    return PahoDevice(gw.port, gw.root, device_id, files=files,
                      username=f"{HOSTNAME}/{device_id}/?api-version=2021-04-12")


@pytest.mark.timeout(120)
def test_a_gateway_with_only_a_bootstrap_cert_enrolls_and_forwards_telemetry(tmp_path: Path) -> None:
    with EstHub.start_est(tmp_path / "hub") as hub, EstGateway.start_est(tmp_path / "gw", hub) as gw:
        gw.wait_synced(30)
        identity = gw.state_dir / "est" / "identity.pem"
        key = gw.state_dir / "est" / "identity.key"
        cert = x509.load_pem_x509_certificates(identity.read_bytes())[0]
        assert cert.subject.rfc4514_string() == f"CN={GATEWAY_ID}"
        assert cert.issuer.rfc4514_string() == "CN=edgegate hub-mock EST CA"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert stat.S_IMODE((gw.state_dir / "est" / "edge-ca.key").stat().st_mode) == 0o600
        issued = hub.est_view()["issued"]
        assert [(i["profile"], i["client"]) for i in issued] == [
            ("identity", f"bootstrap:{GATEWAY_ID}"), ("edge-ca", f"identity:{GATEWAY_ID}")]

        device = sensor(gw, hub, tmp_path, "temp-1")
        wait_for(lambda: device.connect() == 0, what="device connects")
        assert device.publish("devices/temp-1/messages/events/", b'{"t": 21.5}')
        wait_for(lambda: payloads(hub, "temp-1") == [b'{"t": 21.5}'], what="telemetry at the hub")
        device.close()

        # Devices see Edge CA (EST-issued) <- EST CA <- EST root, verified for the gateway's name.
        pems, verify = wire_chain(gw.port, gw.root)
        assert verify == "0 (ok)"
        subjects = [x509.load_pem_x509_certificate(p.encode()).subject.rfc4514_string() for p in pems]
        assert subjects == [f"CN={HOSTNAME}", f"CN={GATEWAY_ID} Edge CA", "CN=edgegate hub-mock EST CA"]
        # Negative control: the hub's root is not what devices trust.
        assert wire_chain(gw.port, hub.hub_root)[1] != "0 (ok)"
        status = gw.est_status()
        assert status["identity"]["level"] == "ok"
        assert status["edge_ca"]["level"] == "ok"


class Fleet:
    """TempSensors publishing every 0.3 s from a thread; counts what they sent and any disconnect."""

    def __init__(self, devices: list[PahoDevice]) -> None:
        self.devices = devices
        self.sent: dict[str, int] = {d.client_id: 0 for d in devices}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        for device in self.devices:
            assert device.connect() == 0
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.3):
            for device in self.devices:
                n = self.sent[device.client_id]
                if device.publish(f"devices/{device.client_id}/messages/events/", f'{{"n": {n}}}'.encode()):
                    self.sent[device.client_id] = n + 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def disconnected(self) -> list[str]:
        return [d.client_id for d in self.devices if d.disconnected.is_set()]


def file_key(path: Path) -> bytes:
    return public_key(path.read_bytes().split(b"-----END CERTIFICATE-----")[0] + b"-----END CERTIFICATE-----\n")


@pytest.mark.timeout(180)
def test_identity_and_edge_ca_renew_with_new_keys_while_devices_stay_connected(tmp_path: Path) -> None:
    with EstHub.start_est(tmp_path / "hub", identity_lifetime=24, edge_ca_lifetime=30) as hub, \
            EstGateway.start_est(tmp_path / "gw", hub) as gw:
        gw.wait_synced(30)
        est_dir = gw.state_dir / "est"
        first_identity, first_edge = file_key(est_dir / "identity.pem"), file_key(est_dir / "edge-ca.pem")
        first_wire, verify = wire_chain(gw.port, gw.root)
        assert verify == "0 (ok)"
        fleet = Fleet([sensor(gw, hub, tmp_path, f"temp-{i}") for i in range(3)])
        fleet.start()
        try:
            # Both certificates renewed at least once after the first enrollment.
            gw.wait_est(lambda s: s["identity"]["renewals"] >= 2 and s["edge_ca"]["renewals"] >= 2
                        and not s["identity"]["waiting_to_confirm"], timeout=90, what="both renewed")
            renewed_wire, verify = wire_chain(gw.port, gw.root)
            assert verify == "0 (ok)"
            assert file_key(est_dir / "identity.pem") != first_identity  # rotate_key: new identity key
            assert file_key(est_dir / "edge-ca.pem") != first_edge  # and a new Edge CA key
            assert public_key(renewed_wire[1]) != public_key(first_wire[1])  # the wire shows the new Edge CA
            operations = {(i["profile"], i["operation"], i["client"].split(":")[0]) for i in hub.est_view()["issued"]}
            assert ("identity", "simplereenroll", "identity") in operations
            # The hub link kept working with the renewed identity: telemetry sent now still arrives.
            sent_before = dict(fleet.sent)
            wait_for(lambda: all(fleet.sent[k] > v + 3 for k, v in sent_before.items()), what="more readings")
        finally:
            fleet.stop()
        for device in fleet.devices:
            wait_for(lambda d=device: len(payloads(hub, d.client_id)) >= fleet.sent[d.client_id], timeout=60,
                     what=f"every reading of {device.client_id} at the hub")
        assert fleet.disconnected() == []  # nobody was dropped by the hot swaps
        assert gw.status()["sync"]["state"] == "online"  # type: ignore[index]
        for device in fleet.devices:
            device.close()


@pytest.mark.timeout(240)
def test_est_down_across_threshold_and_past_expiry_keeps_serving_and_recovers_by_itself(tmp_path: Path) -> None:
    with EstHub.start_est(tmp_path / "hub", identity_lifetime=15, edge_ca_lifetime=60) as hub, \
            EstGateway.start_est(tmp_path / "gw", hub) as gw:
        gw.wait_synced(30)
        first = gw.est_status()
        online, later = sensor(gw, hub, tmp_path, "temp-online"), sensor(gw, hub, tmp_path, "temp-later")
        wait_for(lambda: online.connect() == 0, what="first device connects")
        assert online.publish("devices/temp-online/messages/events/", b"before")

        hub.est_fault("down")
        # Past the identity's expiry and the Edge CA's renewal threshold with EST unreachable.
        status = gw.wait_est(lambda s: s["identity"]["level"] == "expired" and
                             s["edge_ca"]["level"] != "ok" and s["identity"]["failures"] > 0,
                             timeout=90, what="identity expired, Edge CA past its threshold")
        assert status["identity"]["last_error"]["reason"] == "unreachable"
        assert "expired" in status["identity"]["left"]
        assert status["edge_ca"]["renewals"] == first["edge_ca"]["renewals"]  # nothing could be renewed
        counters = gw.status()["counters"]
        assert counters['est_expiry_warnings{cert="identity",level="expired"}'] >= 1  # type: ignore[index]
        assert counters['est_renewals{cert="identity",result="unreachable"}'] >= 1  # type: ignore[index]
        gw.wait_log("EST identity certificate expired")
        shown = subprocess.run([sys.executable, "-m", "gateway.cli.main", "status", "-c", str(gw.config_path)],
                               cwd=REPO, capture_output=True, text=True, timeout=30).stdout
        assert re.search(r"EST identity expired \S+ ago \(expired\), next renewal .*last error: unreachable", shown), \
            shown
        # Still serving devices: the connected one publishes, a new one connects.
        assert online.publish("devices/temp-online/messages/events/", b"during")
        assert later.connect() == 0
        assert later.publish("devices/temp-later/messages/events/", b"during")

        hub.est_fault("clear")
        # Back by itself: the expired identity is re-obtained with the bootstrap cert, the Edge CA renewed.
        gw.wait_est(lambda s: s["identity"]["level"] == "ok" and s["edge_ca"]["renewals"] > first["edge_ca"]["renewals"]
                    and not s["identity"]["waiting_to_confirm"], timeout=90, what="recovered")
        rebootstraps = [i for i in hub.est_view()["issued"]
                        if i["profile"] == "identity" and i["client"] == f"bootstrap:{GATEWAY_ID}"]
        assert len(rebootstraps) >= 2  # the first enrollment and the re-bootstrap after expiry
        wait_for(lambda: payloads(hub, "temp-online") == [b"before", b"during"], timeout=60,
                 what="the readings buffered during the outage reach the hub")
        wait_for(lambda: payloads(hub, "temp-later") == [b"during"], timeout=60, what="the later device's reading")
        assert not online.disconnected.is_set()
        online.close()
        later.close()


@pytest.mark.timeout(180)
def test_a_restart_with_an_expired_identity_while_est_is_down_still_serves_devices(tmp_path: Path) -> None:
    with EstHub.start_est(tmp_path / "hub", identity_lifetime=10, edge_ca_lifetime=300) as hub, \
            EstGateway.start_est(tmp_path / "gw", hub) as gw:
        gw.wait_synced(30)
        device = sensor(gw, hub, tmp_path, "temp-r")
        wait_for(lambda: device.connect() == 0, what="device connects")  # cached by the gateway
        device.close()
        gw.stop()
        hub.est_fault("down")
        identity = gw.state_dir / "est" / "identity.pem"
        expiry = x509.load_pem_x509_certificates(identity.read_bytes())[0].not_valid_after_utc
        wait_for(lambda: datetime.now(UTC) > expiry, timeout=30, what="the identity expires")
        gw.restart()  # starts although the identity expired and EST is down
        status = gw.wait_est(lambda s: s["identity"]["level"] == "expired", timeout=30, what="expired at start")
        assert status["identity"]["last_error"] is None or status["identity"]["last_error"]["reason"] == "unreachable"
        again = PahoDevice(
            gw.port, gw.root, "temp-r", files=DeviceFiles(tmp_path / "devices" / "temp-r.cert.pem",
                                                          tmp_path / "devices" / "temp-r.key.pem"),
            username=f"{HOSTNAME}/temp-r/?api-version=2021-04-12")
        assert again.connect() == 0  # served from the cache
        assert again.publish("devices/temp-r/messages/events/", b"while-expired")
        hub.est_fault("clear")
        gw.wait_est(lambda s: s["identity"]["level"] == "ok" and not s["identity"]["waiting_to_confirm"],
                    timeout=90, what="re-bootstrapped after the restart")
        wait_for(lambda: b"while-expired" in payloads(hub, "temp-r"), timeout=90, what="the reading at the hub")
        again.close()

"""A gateway whose certificates come from EST (hub-mock's EST server, real processes, real TLS).

Lifetimes are seconds-scale in the EST policy (no clock faking): renewal, EST outages across the
threshold and past expiry, and recovery happen in real time.
"""

from __future__ import annotations

import base64
import re
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509

from tests.clients import PahoDevice
from tests.estproc import EstGateway, EstHub
from tests.gatewayproc import GATEWAY_ID, HOSTNAME

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


def leaf_keys(pems: list[str]) -> list[bytes]:
    return [x509.load_pem_x509_certificate(p.encode()).public_key().public_bytes(
        encoding=__import__("cryptography.hazmat.primitives.serialization", fromlist=["Encoding"]).Encoding.DER,
        format=__import__("cryptography.hazmat.primitives.serialization", fromlist=["PublicFormat"])
        .PublicFormat.SubjectPublicKeyInfo) for p in pems]


def sensor(gw: EstGateway, hub: EstHub, tmp: Path, device_id: str) -> PahoDevice:
    from tests.clients import DeviceFiles

    cert = gw.register_self_signed(device_id)
    files = DeviceFiles.write(cert, tmp / "devices", device_id)
    device = PahoDevice(gw.port, gw.root, device_id, files=files,
                        username=f"{HOSTNAME}/{device_id}/?api-version=2021-04-12")
    return device


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
        assert status["identity"]["level"] == "ok" and status["edge_ca"]["level"] == "ok"

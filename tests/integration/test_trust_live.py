"""Trust changes while the gateway runs, with real processes: `hub-mock ca add` / `ca remove` travel on the
change feed (a full resync is an hour away), a registered intermediate is a trust anchor of its own, and
a session ends when its certificate expires. Latencies are printed (figures, not assertions: the waits
are generous so a loaded machine passes).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.pki import CA, IssuedCert
from tests.clients import DeviceFiles, PahoDevice
from tests.gatewayproc import GATEWAY_ID, GatewayProcess
from tests.hubproc import HubProcess

pytestmark = pytest.mark.integration


def wait_for(cond: Callable[[], object], timeout: float, what: str) -> float:
    """Seconds until `cond()` held."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if cond():
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[HubProcess, GatewayProcess]]:
    with HubProcess.start(tmp_path / "hub") as hub:
        gw = GatewayProcess.start(tmp_path / "gw", hub, extra="[auth]\nclock_skew_tolerance = 2\n")
        try:
            gw.wait_synced()
            yield hub, gw
        finally:
            gw.stop()


def ca_device(hub: HubProcess, issuer: CA, device_id: str, tmp: Path, **dates: datetime) -> DeviceFiles:
    """A certificateAuthority device registered under the gateway, its cert (leaf + intermediates) on disk."""
    issued: IssuedCert = issuer.issue_device_cert(device_id, **dates)  # type: ignore[arg-type]
    hub.admin.add_device(device_id, parent=GATEWAY_ID, ca=True)
    return DeviceFiles.write(issued, tmp, device_id)


def attempt(gw: GatewayProcess, device_id: str, files: DeviceFiles) -> int:
    device = PahoDevice(gw.port, gw.root, device_id, files)
    try:
        return device.connect()
    finally:
        device.close()


@pytest.mark.timeout(120)
def test_ca_add_and_remove_are_live(pair: tuple[HubProcess, GatewayProcess], tmp_path: Path) -> None:
    hub, gw = pair
    root = CA.create_root("Device Root CA", path_length=1)
    inter = root.create_child_ca("Device Intermediate CA")
    files = ca_device(hub, inter, "ca-sensor", tmp_path)
    assert attempt(gw, "ca-sensor", files) == 5  # negative control: no CA registered yet
    gw.wait_log("reason=chain_unknown_ca")

    (tmp_path / "root.pem").write_bytes(root.cert_pem.bytes)
    started = time.monotonic()
    done = hub.cli("ca", "add", "device-root", str(tmp_path / "root.pem"))
    assert done.returncode == 0, done.stderr
    admitted = wait_for(lambda: attempt(gw, "ca-sensor", files) == 0, 15, "the device to be admitted")
    print(f"admitted {admitted:.2f} s after `hub-mock ca add` returned "
          f"({time.monotonic() - started:.2f} s after it was started)")
    gw.wait_log("registered CAs now: device-root")

    live = PahoDevice(gw.port, gw.root, "ca-sensor", files)
    assert live.connect() == 0
    try:
        started = time.monotonic()
        done = hub.cli("ca", "remove", "device-root")
        assert done.returncode == 0, done.stderr
        closed = wait_for(live.disconnected.is_set, 15, "the live session to be closed")
        print(f"session closed {closed:.2f} s after `hub-mock ca remove` returned "
              f"({time.monotonic() - started:.2f} s after it was started)")
    finally:
        live.close()
    gw.wait_log("session closed device=ca-sensor")
    gw.wait_log("reason=ca_removed: the registered CA CN=Device Root CA that this device's chain reached was "
                "removed from the hub")
    assert attempt(gw, "ca-sensor", files) == 5


@pytest.mark.timeout(120)
def test_a_registered_intermediate_is_a_trust_anchor(pair: tuple[HubProcess, GatewayProcess],
                                                     tmp_path: Path) -> None:
    hub, gw = pair
    root = CA.create_root("Unregistered Root CA", path_length=1)
    inter = root.create_child_ca("Registered Intermediate CA")
    (tmp_path / "inter.pem").write_bytes(inter.cert_pem.bytes)
    done = hub.cli("ca", "add", "device-intermediate", str(tmp_path / "inter.pem"))
    assert done.returncode == 0, done.stderr
    gw.wait_log("registered CAs now: device-intermediate")
    files = ca_device(hub, inter, "under-inter", tmp_path)
    assert wait_for(lambda: attempt(gw, "under-inter", files) == 0, 15, "admission") >= 0
    # Negative control: a sibling intermediate under the same (unregistered) root is not trusted.
    sibling = root.create_child_ca("Unregistered Intermediate CA")
    other = ca_device(hub, sibling, "under-sibling", tmp_path)
    time.sleep(1)  # let the device reach the cache, so the refusal is about the chain
    assert attempt(gw, "under-sibling", other) == 5
    gw.wait_log("rejected device=under-sibling")
    gw.wait_log("reason=chain_unknown_ca")


@pytest.mark.timeout(120)
def test_a_session_ends_when_its_certificate_expires(pair: tuple[HubProcess, GatewayProcess],
                                                     tmp_path: Path) -> None:
    hub, gw = pair
    root = CA.create_root("Device Root CA", path_length=1)
    inter = root.create_child_ca("Device Intermediate CA")
    (tmp_path / "root.pem").write_bytes(root.cert_pem.bytes)
    assert hub.cli("ca", "add", "device-root", str(tmp_path / "root.pem")).returncode == 0
    gw.wait_log("registered CAs now: device-root")
    now = datetime.now(UTC)
    expires = (now + timedelta(seconds=8)).replace(microsecond=0)  # X.509 dates have whole seconds
    short = ca_device(hub, inter, "short-lived", tmp_path, not_before=now - timedelta(minutes=5), not_after=expires)
    lasting = ca_device(hub, inter, "long-lived", tmp_path)
    first = PahoDevice(gw.port, gw.root, "short-lived", short)
    second = PahoDevice(gw.port, gw.root, "long-lived", lasting)
    try:
        assert wait_for(lambda: first.connect() == 0, 15, "admission") >= 0
        assert second.connect() == 0
        wait_for(first.disconnected.is_set, 30, "the session of the expired certificate to be closed")
        late = datetime.now(UTC) - expires
        print(f"closed {late.total_seconds():.2f} s after notAfter (skew 2 s)")
        assert late > timedelta(seconds=2)  # never before notAfter + skew
        assert not second.disconnected.is_set()
    finally:
        first.close()
        second.close()
    gw.wait_log("session closed device=short-lived")
    line = next(x for x in gw.log().splitlines() if "session closed device=short-lived" in x)
    sentence = line.split("reason=cert_expired: ", 1)[1]
    assert sentence.startswith("the device certificate expired on ")
    assert attempt(gw, "short-lived", short) == 5
    gw.wait_log("reason=cert_expired from 127.0.0.1")
    rejected = next(x for x in gw.log().splitlines() if "rejected device=short-lived" in x)
    assert rejected.endswith(sentence), (rejected, sentence)


@pytest.mark.timeout(120)
def test_ca_replace_moves_trust_to_the_new_certificate(pair: tuple[HubProcess, GatewayProcess],
                                                       tmp_path: Path) -> None:
    hub, gw = pair
    old, new = CA.create_root("Device Root CA", path_length=1), CA.create_root("Device Root CA 2", path_length=1)
    (tmp_path / "old.pem").write_bytes(old.cert_pem.bytes)
    (tmp_path / "new.pem").write_bytes(new.cert_pem.bytes)
    assert hub.cli("ca", "add", "device-root", str(tmp_path / "old.pem")).returncode == 0
    gw.wait_log("registered CAs now: device-root")
    old_files = ca_device(hub, old.create_child_ca("Old Intermediate"), "on-old", tmp_path)
    new_files = ca_device(hub, new.create_child_ca("New Intermediate"), "on-new", tmp_path)
    live = PahoDevice(gw.port, gw.root, "on-old", old_files)
    assert wait_for(lambda: live.connect() == 0, 15, "admission under the old CA") >= 0
    try:
        assert attempt(gw, "on-new", new_files) == 5
        done = hub.cli("ca", "replace", "device-root", str(tmp_path / "new.pem"))
        assert done.returncode == 0, done.stderr
        assert "device-root: replaced" in done.stdout
        wait_for(live.disconnected.is_set, 15, "the session under the replaced CA to be closed")
    finally:
        live.close()
    assert wait_for(lambda: attempt(gw, "on-new", new_files) == 0, 15, "admission under the new CA") >= 0
    assert attempt(gw, "on-old", old_files) == 5
    listed = hub.cli("ca", "list", "--json")
    assert [ca["name"] for ca in json.loads(listed.stdout)] == ["device-root"]

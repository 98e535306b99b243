"""A full disk, for real: the gateway's state directory on an 8 MiB tmpfs the test mounts, the hub down,
devices publishing QoS 1 until the gateway stops acknowledging. Then the hub comes back: every
acknowledged message arrives exactly once, in order per device, and new messages are accepted again --
without a restart, and (second test) across one.

Needs `mount -t tmpfs` (root, or CAP_SYS_ADMIN); skipped with that reason otherwise.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.clients import DeviceFiles, PahoDevice
from tests.gatewayproc import GatewayProcess
from tests.hubproc import HubProcess
from tests.integration.test_end_to_end import hub_payloads, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

PAYLOAD = 8 * 1024  # ~1,000 messages fill the 8 MiB file system
DEVICES = ("disk-a", "disk-b")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs; the gateway's state directory goes inside it."""
    mountpoint = tmp_path / "small"
    mountpoint.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", str(mountpoint)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root or CAP_SYS_ADMIN): {done.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubProcess]:
    with HubProcess.start(tmp_path / "hub") as running:
        yield running


def start_gateway(small_disk: Path, tmp_path: Path, hub: HubProcess) -> GatewayProcess:
    gw = GatewayProcess(tmp_path / "gw", hub)
    gw.state_dir = small_disk / "state"
    (tmp_path / "gw").mkdir(parents=True, exist_ok=True)
    gw._write_config("", 0)
    gw._launch()
    gw.wait_synced()
    return gw


class Fleet:
    """The test's devices: registered once, reconnected as often as needed."""

    def __init__(self, gw: GatewayProcess, directory: Path) -> None:
        self.gw = gw
        self.files = {d: DeviceFiles.write(gw.register_self_signed(d), directory, d) for d in DEVICES}
        self.acked: dict[str, list[bytes]] = {d: [] for d in DEVICES}
        self.next = dict.fromkeys(DEVICES, 0)
        wait_for(lambda: gw.status().get("sync", {}).get("cached_devices", 0) >= len(DEVICES),  # type: ignore[union-attr]
                 what="the devices cached")

    def connect(self, device_id: str) -> PahoDevice:
        dev = PahoDevice(self.gw.port, self.gw.root, device_id, self.files[device_id])
        wait_for(lambda: _connects(dev), timeout=30, what=f"{device_id} connected")
        return dev

    def publish_until_refused(self, limit: int = 5000) -> int:
        """Publish from each device in turn until the gateway stops acknowledging; returns how many it acked."""
        acked = 0
        devices = {d: self.connect(d) for d in DEVICES}
        try:
            for _ in range(limit):
                for device_id, dev in devices.items():
                    payload = self._payload(device_id)
                    if not dev.publish(f"devices/{device_id}/messages/events/", payload, timeout=3):
                        return acked
                    self.acked[device_id].append(payload)
                    acked += 1
            raise AssertionError(f"the gateway acknowledged {acked} messages of {PAYLOAD} bytes on 8 MiB")
        finally:
            for dev in devices.values():
                dev.close()

    def publish_one(self, device_id: str) -> None:
        dev = self.connect(device_id)
        try:
            payload = self._payload(device_id)
            assert dev.publish(f"devices/{device_id}/messages/events/", payload, timeout=10), "not accepted again"
            self.acked[device_id].append(payload)
        finally:
            dev.close()

    def _payload(self, device_id: str) -> bytes:
        n = self.next[device_id]
        self.next[device_id] += 1
        return (b"%s-%06d-" % (device_id.encode(), n)).ljust(PAYLOAD, b"x")

    def wait_at_hub(self, hub: HubProcess, timeout: float, what: str) -> None:
        """Until every acknowledged message is at the hub. (Not status.json's outbox_depth == 0: the file is
        rewritten every 2 s, so right after a publish it can still show the depth from before it, and the
        forwarder gathers a steady stream for 250 ms before it POSTs.)"""
        wait_for(lambda: all(set(self.acked[d]) <= set(hub_payloads(hub, d)) for d in DEVICES), timeout=timeout,
                 what=what)

    def assert_exactly_once_in_order(self, hub: HubProcess) -> None:
        for device_id in DEVICES:
            stored = hub_payloads(hub, device_id)
            assert len(stored) == len(set(stored)), f"{device_id}: duplicates at the hub"
            assert set(self.acked[device_id]) <= set(stored), f"{device_id}: acknowledged messages missing"
            assert stored == sorted(stored), f"{device_id}: out of order"


def _connects(dev: PahoDevice) -> bool:
    try:
        return dev.connect(timeout=5) == 0
    except (OSError, TimeoutError):
        dev.close()
        return False


def outbox_status(gw: GatewayProcess) -> dict[str, object]:
    return dict(gw.status()["outbox_store"])  # type: ignore[arg-type]


def fill_with_the_hub_down(gw: GatewayProcess, hub: HubProcess, fleet: Fleet) -> int:
    # 503 rather than "down": while the hub-mock listener is closed for the ~30 s of filling, another
    # process on this busy machine may take its port, and "up" then fails to bind.
    hub.admin.fault("error", 503)
    acked = fleet.publish_until_refused()
    assert acked > 200, "the gateway refused long before the disk was full"
    free = os.statvfs(gw.state_dir).f_bavail * os.statvfs(gw.state_dir).f_frsize
    assert free > 256 * 1024, "refusing came too late: the reserve is gone"
    wait_for(lambda: outbox_status(gw).get("refusing"), what="status says the outbox refuses")
    return acked


def test_a_full_disk_drains_once_the_hub_is_back_and_accepts_again_without_a_restart(
    small_disk: Path, tmp_path: Path, hub: HubProcess
) -> None:
    gw = start_gateway(small_disk, tmp_path, hub)
    with contextlib.closing(_Stopper(gw)):
        fleet = Fleet(gw, tmp_path / "devices")
        fill_with_the_hub_down(gw, hub, fleet)
        hub.admin.fault("clear")
        wait_for(lambda: gw.status().get("outbox_depth") == 0, timeout=120, what="the outbox drained")
        fleet.assert_exactly_once_in_order(hub)
        wait_for(lambda: outbox_status(gw).get("refusing") is None, timeout=30, what="space back")
        for device_id in DEVICES:
            fleet.publish_one(device_id)  # accepted again, no restart
        fleet.wait_at_hub(hub, 60, "the new messages at the hub")
        fleet.assert_exactly_once_in_order(hub)
        assert gw.proc is not None
        assert gw.proc.poll() is None  # it never died on the full disk


def test_a_full_disk_drains_after_a_restart_too(small_disk: Path, tmp_path: Path, hub: HubProcess) -> None:
    gw = start_gateway(small_disk, tmp_path, hub)
    with contextlib.closing(_Stopper(gw)):
        fleet = Fleet(gw, tmp_path / "devices")
        fill_with_the_hub_down(gw, hub, fleet)
        assert gw.stop() == 0
        hub.admin.fault("clear")
        gw.restart()
        gw.wait_synced()
        wait_for(lambda: gw.status().get("outbox_depth") == 0, timeout=120, what="the outbox drained")
        fleet.assert_exactly_once_in_order(hub)
        for device_id in DEVICES:
            fleet.publish_one(device_id)
        fleet.wait_at_hub(hub, 60, "the new messages at the hub")
        fleet.assert_exactly_once_in_order(hub)


class _Stopper:
    def __init__(self, gw: GatewayProcess) -> None:
        self.gw = gw

    def close(self) -> None:
        self.gw.stop()


def _fill_to_the_last_byte(directory: Path) -> Path:
    """Something else (a log, a core dump) takes every free byte of the file system."""
    junk = directory / "junk"
    fd = os.open(junk, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for chunk in (65536, 4096, 512, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * chunk)
    finally:
        os.close(fd)
    return junk


def test_a_disk_filled_by_something_else_neither_stops_a_start_nor_wedges_the_outbox(
    small_disk: Path, tmp_path: Path, hub: HubProcess
) -> None:
    gw = start_gateway(small_disk, tmp_path, hub)
    with contextlib.closing(_Stopper(gw)):
        fleet = Fleet(gw, tmp_path / "devices")
        hub.admin.fault("error", 503)
        for _ in range(20):
            for device_id in DEVICES:
                fleet.publish_one(device_id)
        gw.stop()
        junk = _fill_to_the_last_byte(small_disk)
        assert os.statvfs(small_disk).f_bavail == 0
        gw.restart()  # starts on a full disk
        hub.admin.fault("clear")
        fleet.wait_at_hub(hub, 120, "every acknowledged message at the hub")
        fleet.assert_exactly_once_in_order(hub)
        junk.unlink()  # space comes back: accepted again, no restart
        for device_id in DEVICES:
            fleet.publish_one(device_id)
        fleet.wait_at_hub(hub, 60, "the new messages at the hub")
        fleet.assert_exactly_once_in_order(hub)

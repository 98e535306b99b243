"""A wall-clock step does not empty the outbox: a real `edgegate run` under libfaketime (the monotonic clock
left alone, as FAKETIME_DONT_FAKE_MONOTONIC does), the hub refusing, ten messages queued with
time_to_live = 1h, then the gateway's wall clock jumps two hours forward -- what a Raspberry Pi without
RTC sees when NTP answers. The messages have been queued for seconds, not hours: all ten reach the hub.
The step is proven to have happened inside the gateway (its status.json is stamped two hours ahead).

Needs Debian's `faketime` (libfaketime; .ci/sysdeps installs it); skipped with that reason otherwise.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.clients import DeviceFiles, PahoDevice
from tests.gatewayproc import GatewayProcess
from tests.hubproc import REPO, HubProcess
from tests.integration.test_end_to_end import hub_payloads, wait_for

pytestmark = pytest.mark.integration

LIBFAKETIME = next((p for p in (Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"),
                                Path("/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1"),
                                Path("/usr/lib/faketime/libfaketime.so.1")) if p.exists()), None)


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubProcess]:
    with HubProcess.start(tmp_path / "hub") as running:
        yield running


def launch_faked(gw: GatewayProcess, offset_file: Path) -> None:
    """`edgegate run` like GatewayProcess._launch, with libfaketime reading its offset from `offset_file`."""
    ready = gw.directory / "ready.json"
    ready.unlink(missing_ok=True)
    env = dict(os.environ, LD_PRELOAD=str(LIBFAKETIME), FAKETIME_TIMESTAMP_FILE=str(offset_file),
               FAKETIME_NO_CACHE="1", FAKETIME_DONT_FAKE_MONOTONIC="1")
    gw.proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli.main", "run", "-c", str(gw.config_path), "--ready-file", str(ready),
         "--log-level", "DEBUG"], cwd=REPO, stdout=gw.log_path.open("ab"), stderr=subprocess.STDOUT, env=env)
    wait_for(lambda: ready.exists() or gw.proc is None or gw.proc.poll() is not None, timeout=60,
             what="the gateway ready")
    assert ready.exists(), gw.log()[-3000:]
    gw.port = int(json.loads(ready.read_text())["port"])


@pytest.mark.skipif(LIBFAKETIME is None, reason="libfaketime not installed (Debian package faketime)")
def test_a_clock_step_of_two_hours_expires_nothing_queued_for_seconds(tmp_path: Path, hub: HubProcess) -> None:
    offset = tmp_path / "faketime"
    offset.write_text("+0\n")
    gw = GatewayProcess(tmp_path / "gw", hub)
    gw.directory.mkdir(parents=True)
    gw._write_config('[outbox]\ntime_to_live = "1h"\n', 0)
    launch_faked(gw, offset)
    try:
        gw.wait_synced()
        cert = gw.register_self_signed("clock-sensor")
        wait_for(lambda: gw.status().get("sync", {}).get("cached_devices", 0) >= 1,  # type: ignore[union-attr]
                 what="the device cached")
        hub.admin.fault("error", 503)
        dev = PahoDevice(gw.port, gw.root, "clock-sensor", DeviceFiles.write(cert, tmp_path, "clock-sensor"))
        assert dev.connect() == 0
        try:
            sent = [b"reading-%d" % n for n in range(10)]
            for payload in sent:
                assert dev.publish("devices/clock-sensor/messages/events/", payload, timeout=10)
        finally:
            dev.close()

        offset.write_text("+2h\n")  # NTP answers: the wall clock jumps two hours
        stepped = datetime.now(UTC) + timedelta(hours=1, minutes=50)
        wait_for(lambda: datetime.fromisoformat(str(gw.status()["written_at"])) > stepped,
                 what="the gateway's clock stepped")
        time.sleep(3)  # the forwarder retries (each read checks expiry) on the stepped clock
        assert gw.status()["outbox_depth"] == 10
        hub.admin.fault("clear")
        wait_for(lambda: hub_payloads(hub, "clock-sensor") == sent, timeout=60, what="all ten at the hub")
        assert "expired" not in json.dumps(gw.status().get("counters", {}))
    finally:
        assert gw.stop() == 0

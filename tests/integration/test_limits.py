"""The gateway under the limits it is given: an open-files limit of 1,024 and a cgroup memory limit,
each with more devices dialling than fit. The excess is refused with a clear log line; the hub link, the
forwarder and the status writer keep working; every acknowledged reading reaches the hub."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.service.budget import MIB, Resources, connection_budget, connections_for_open_files
from tests.bigfleet import hub_readings, make_big_fleet
from tests.chaos.fleet import Fleet
from tests.hubproc import HubProcess
from tests.serviceproc import ServiceGateway

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def wait_for(cond: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubProcess]:
    with HubProcess.start(tmp_path / "hub") as running:
        yield running


def storm(gw: ServiceGateway, hub: HubProcess, fleet_dir: Path, dialling: int, admitted: int,
          memory_limit: int | None = None) -> None:
    """`dialling` sensors at a gateway that fits `admitted`: check the promises, then drain."""
    wait_for(lambda: gw.status().get("sync", {}).get("cached_devices") == dialling, 120,  # type: ignore[union-attr]
             "the gateway to cache every device")
    fleet = Fleet(gw.port, gw.root, fleet_dir, dialling, interval=2.0)
    try:
        wait_for(lambda: len(fleet.connected) >= admitted, 300, f"{admitted} sensors connected")
        wait_for(lambda: "device connection(s) in the last" in gw.log(), 60, "the refusal log line")
        # The status writer keeps writing, the forwarder keeps forwarding, while the excess keeps dialling.
        written = gw.status()["written_at"]
        before = hub.admin.messages(None, limit=1)["total"]
        wait_for(lambda: gw.status()["written_at"] != written, 30, "status.json to be rewritten")
        wait_for(lambda: hub.admin.messages(None, limit=1)["total"] > before + 100, 60,
                 "more readings at the hub")
        status = gw.status()
        assert status["connected_devices"] <= admitted
        assert status["limits"]["max_connections"] == admitted  # type: ignore[index]
        assert status["healthy"] is True, status["tasks"]
        if memory_limit is not None:
            # The memory guard measures the same process against the same limit (the connection budget
            # binds first here, so the guard never has to act).
            memory = status["memory"]
            assert memory["limit_mib"] == memory_limit / MIB  # type: ignore[index]
            assert 30 < memory["anonymous_mib"] < 0.9 * memory_limit / MIB  # type: ignore[index,operator]
            assert memory["pressure"] == "clear"  # type: ignore[index]
            # ... and `edgegate status` says so, to an operator asking why devices are refused.
            shown = subprocess.run([sys.executable, "-m", "gateway.cli.main", "status", "-c", str(gw.config_path)],
                                   capture_output=True, text=True, timeout=60, check=False)
            line = next(ln for ln in shown.stdout.splitlines() if ln.startswith("memory "))
            assert f"of {memory_limit // MIB} MiB anonymous" in line, line
            assert line.endswith("): clear"), line
    finally:
        fleet.stop()
    assert gw.proc is not None
    assert gw.proc.poll() is None
    # No acknowledged reading is stuck: the outbox drains and the hub has every one the sensors saw acked.
    wait_for(lambda: gw.status()["outbox_depth"] == 0, 120, "the outbox to drain")
    at_hub = hub_readings(hub)
    missing = {device: sorted(set(seqs) - set(at_hub.get(device, []))) for device, seqs in fleet.acked.items()}
    assert not {d: m for d, m in missing.items() if m}
    assert sum(len(v) for v in fleet.acked.values()) > admitted
    log = gw.log()
    assert "Too many open files" not in log
    assert "Traceback" not in log
    assert gw.stop() == 0


@pytest.mark.timeout(900)
def test_1100_devices_dialling_a_gateway_with_1024_descriptors(tmp_path: Path, hub: HubProcess) -> None:
    dialling = 1100
    admitted = connections_for_open_files(1024)
    assert admitted < dialling  # the test is about the excess
    gw = ServiceGateway.launch(tmp_path / "gw", hub, prefix=("prlimit", "--nofile=1024:1024", "--"),
                               args=("--log-level", "INFO"))
    try:
        make_big_fleet(hub, tmp_path / "fleet", dialling)
        gw.wait_synced()
        assert f"capped from 10000 to {admitted} by open_files" in gw.log()
        storm(gw, hub, tmp_path / "fleet", dialling, admitted)
    finally:
        gw.stop()


def _memory_cgroup() -> Path | None:
    """A fresh child of this process's cgroup v1 memory cgroup, if it can be made here."""
    line = next((ln for ln in Path("/proc/self/cgroup").read_text().splitlines() if ":memory:" in ln), None)
    if line is None:
        return None
    mine = Path("/sys/fs/cgroup/memory") / line.split(":", 2)[2].lstrip("/")
    child = mine / f"edgegate-test-{os.getpid()}-{time.monotonic_ns()}"
    try:
        child.mkdir()
    except OSError:
        return None
    return child


@pytest.mark.timeout(900)
def test_a_memory_cgroup_caps_connections_and_the_gateway_is_never_killed(tmp_path: Path, hub: HubProcess) -> None:
    cgroup = _memory_cgroup()
    if cgroup is None:
        pytest.skip("no writable cgroup v1 memory controller here; the [limits] memory path is tested in unit tests")
    try:
        # A budget for ~300 devices: (80 MiB baseline + 300 x 24 KiB) / 0.8.
        limit = 109 * MIB
        (cgroup / "memory.limit_in_bytes").write_text(str(limit))
        admitted = connection_budget(10_000, Resources(open_files=20_000, memory=limit)).max_connections
        dialling = admitted + 150
        join = ("sh", "-c", f'echo $$ > {cgroup / "cgroup.procs"} && exec "$@"', "sh")
        gw = ServiceGateway.launch(tmp_path / "gw", hub, prefix=join, args=("--log-level", "INFO"))
        try:
            make_big_fleet(hub, tmp_path / "fleet", dialling)
            gw.wait_synced()
            assert f"capped from 10000 to {admitted} by memory" in gw.log()
            assert "cgroup v1 memory.limit_in_bytes" in gw.log()
            storm(gw, hub, tmp_path / "fleet", dialling, admitted, memory_limit=limit)
            assert int((cgroup / "memory.max_usage_in_bytes").read_text()) < limit
            oom = (cgroup / "memory.oom_control").read_text()
            assert "oom_kill 0" in oom or "oom_kill" not in oom
        finally:
            gw.stop()
    finally:
        for _ in range(50):
            try:
                cgroup.rmdir()
                break
            except OSError:
                time.sleep(0.1)

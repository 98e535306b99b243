"""`edgegate check` against a real hub-mock and a gateway's real state directory."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.gatewayproc import GatewayProcess
from tests.hubproc import HubProcess

pytestmark = pytest.mark.integration


def check(config: Path) -> tuple[int, list[dict[str, str]]]:
    done = subprocess.run([sys.executable, "-m", "gateway.cli.main", "check", "-c", str(config), "--json"],
                          capture_output=True, text=True, timeout=60)
    return done.returncode, json.loads(done.stdout)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[HubProcess, GatewayProcess]]:
    with HubProcess.start(tmp_path / "hub") as hub:
        gw = GatewayProcess.start(tmp_path / "gw", hub)
        gw.stop()  # its state (quickstart PKI, database) stays
        yield hub, gw


def by_check(results: list[dict[str, str]], start: str) -> dict[str, str]:
    return next(r for r in results if r["check"].startswith(start))


def test_healthy_gateway_has_no_errors(stack: tuple[HubProcess, GatewayProcess]) -> None:
    _, gw = stack
    code, results = check(gw.config_path)
    assert code == 0, results
    assert by_check(results, "hub hub.local reachable")["status"] == "ok"
    assert by_check(results, "server certificate chain verifies")["status"] == "ok"
    assert by_check(results, "Edge CA is valid")["status"] == "warning"  # quickstart is not for production
    assert by_check(results, "database")["status"] == "ok"


def test_hub_with_a_cert_for_another_name_is_an_error(stack: tuple[HubProcess, GatewayProcess]) -> None:
    _, gw = stack
    text = gw.config_path.read_text().replace('hostname = "hub.local"', 'hostname = "not-the-hub.local"')
    gw.config_path.write_text(text)
    code, results = check(gw.config_path)
    assert code == 1
    hub = by_check(results, "hub not-the-hub.local reachable")
    assert hub["status"] == "error"
    assert "not trusted" in hub["detail"]


def test_world_readable_key_and_bad_config(stack: tuple[HubProcess, GatewayProcess]) -> None:
    _, gw = stack
    (gw.directory / "identity.key").chmod(0o644)
    code, results = check(gw.config_path)
    assert code == 1
    assert results[0]["status"] == "error"  # the config loader already refuses a readable key
    assert "chmod 600" in results[0]["detail"]
    (gw.directory / "identity.key").chmod(0o600)
    gw.config_path.write_text(gw.config_path.read_text() + "\nhostnme = 'typo'\n")
    code, results = check(gw.config_path)
    assert code == 1
    assert results[0]["status"] == "error"
    assert "hostname" in results[0]["detail"]


def test_a_clock_behind_the_last_time_seen_is_a_warning(stack: tuple[HubProcess, GatewayProcess]) -> None:
    _, gw = stack
    code, results = check(gw.config_path)
    assert by_check(results, "system clock")["status"] == "ok"  # negative control: the run saved a true time
    later = datetime.now(UTC) + timedelta(days=40, hours=1)
    (gw.state_dir / "clock.json").write_text(json.dumps({"last_seen": later.isoformat()}))
    code, results = check(gw.config_path)
    assert code == 0, results  # a warning, not an error: the gateway keeps serving
    clock = by_check(results, "system clock")
    assert clock["status"] == "warning"
    assert clock["detail"].startswith("the system clock is 40 days behind the last time this gateway saw; "
                                      "NTP not synced?")
    shown = subprocess.run([sys.executable, "-m", "gateway.cli.main", "status", "-c", str(gw.config_path)],
                           capture_output=True, text=True, timeout=60).stdout
    assert "clock        ⚠ behind: the system clock is 40 days behind" in shown, shown  # from disk: not running

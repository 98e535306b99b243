"""`edgegate demo`, the README's first command, run for real (short, with the offline drill)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_demo_offline_drill_shows_the_chain_and_loses_nothing(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli.main", "demo", "--dir", str(tmp_path / "demo"), "--offline-drill",
         "--drill-after", "3", "--drill-length", "4", "--duration", "10", "--interval", "0.1"],
        capture_output=True, text=True, timeout=120, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    for line in ("depth=3 CN=Demo Private Root", "depth=2 CN=Demo Intermediate", "depth=1 CN=Demo Edge CA",
                 "depth=0 CN=edgegateway.local", "verify other.local: the gateway's certificate is for"):
        assert line in out
    assert "reports interval = 0.2 s: the desired change took effect" in out
    assert 'direct method blink on TempSensor-ca -> 200 {"blinked": 3}' in out
    assert "nothing lost" in out
    assert "0 lost, 0 duplicates, in order" in out
    # The view stayed up until the backlog drained, and says how long that took.
    assert re.search(r"the backlog drained \d+\.\d s after the hub came back", out), out[-2000:]
    assert not (tmp_path / "demo" / "pki" / "edge-ca.key").stat().st_mode & 0o077

"""packaging/edgegate.service, rendered as `edgegate install-service` writes it, passes `systemd-analyze verify`."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.service.unit import UnitSettings, render, template
from tests.hubproc import REPO

pytestmark = pytest.mark.integration


def verify(unit: str, directory: Path) -> subprocess.CompletedProcess[str]:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (.ci/sysdeps installs Debian's systemd)")
    directory.mkdir()
    path = directory / "edgegate.service"
    path.write_text(unit)
    return subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True, timeout=120, check=False)


def settings(tmp_path: Path) -> UnitSettings:
    command = Path(sys.executable).with_name("edgegate")  # the venv's: ExecStart must name an executable
    return UnitSettings(command, tmp_path / "config.toml", Path("/var/lib/edgegate"))


def test_the_packaged_unit_is_the_template() -> None:
    assert (REPO / "packaging" / "edgegate.service").read_text() == template()


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    done = verify(render(settings(tmp_path)), tmp_path / "good")
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "", done.stderr  # systemd reports a bad setting as a warning, rc 0


def test_systemd_analyze_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    # The negative control: the same check sees a typo and a missing executable.
    broken = render(settings(tmp_path)).replace("Type=notify", "Type=notfy")
    done = verify(broken, tmp_path / "typo")
    assert "Failed to parse service type" in done.stderr
    missing = render(UnitSettings(tmp_path / "no-such-edgegate", tmp_path / "c.toml", Path("/var/lib/edgegate")))
    done = verify(missing, tmp_path / "missing")
    assert done.returncode != 0
    assert "no-such-edgegate" in done.stderr


def test_install_service_print_renders_a_unit_systemd_accepts(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'hostname = "gw.local"\nstate_dir = "{tmp_path / "state"}"\n')
    printed = subprocess.run([sys.executable, "-m", "gateway.cli.main", "install-service", "-c", str(config),
                              "--print", "--user", "edgegw"], cwd=REPO, capture_output=True, text=True, timeout=60,
                             check=False)
    assert printed.returncode == 0, printed.stderr
    assert f"run -c {config}" in printed.stdout
    assert f"ReadWritePaths={tmp_path / 'state'}" in printed.stdout
    assert "User=edgegw" in printed.stdout
    assert not (tmp_path / "state").exists()  # --print changes nothing
    done = verify(printed.stdout, tmp_path / "unit")
    assert done.returncode == 0, done.stderr

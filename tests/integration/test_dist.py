"""`make dist`, then `pipx install` of the wheel in a fresh HOME: the three commands run, outside the repo."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from gateway import __version__
from tests.hubproc import REPO

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.timeout(900)
def test_make_dist_then_pipx_install_the_wheel(tmp_path: Path) -> None:
    pipx = shutil.which("pipx")
    if pipx is None:
        pytest.skip("pipx is not installed (.ci/sysdeps installs Debian's pipx)")
    built = subprocess.run(["make", "dist"], cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    wheels = sorted((REPO / "dist").glob("edgegate_mqtt-*-py3-none-any.whl"))
    assert [w.name for w in wheels] == [f"edgegate_mqtt-{__version__}-py3-none-any.whl"]
    assert sorted((REPO / "dist").glob("edgegate_mqtt-*.tar.gz"))

    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home), "PATH": "/usr/local/bin:/usr/bin:/bin", "PIPX_HOME": str(home / ".pipx"),
           "PIPX_BIN_DIR": str(home / "bin"), **{k: v for k, v in os.environ.items() if k.startswith("PIP_")}}
    installed = subprocess.run([pipx, "install", str(wheels[0])], cwd=tmp_path, env=env, capture_output=True,
                               text=True, timeout=600, check=False)
    assert installed.returncode == 0, installed.stdout[-2000:] + installed.stderr[-2000:]
    for command, name in (("edgegate", "edgegate"), ("hub-mock", "hub-mock"), ("tempsensor", "tempsensor")):
        path = home / "bin" / command
        assert path.exists(), f"pipx did not install {command}"
        done = subprocess.run([str(path), "--version"], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(name)
        assert __version__ in done.stdout
    # The installed gateway carries its unit and its migrations (package data), not the repository's.
    unit = subprocess.run([str(home / "bin" / "edgegate"), "install-service", "-c", str(tmp_path / "none.toml"),
                           "--print"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert unit.returncode == 2  # the config does not exist: a configuration error, before anything
    assert "none.toml" in unit.stderr

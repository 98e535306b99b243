"""A bad config.toml stops `edgegate run` with status 2, naming the file, the key and the fix,
before anything starts (no state directory, no listener)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.pki import CA

pytestmark = pytest.mark.integration


def run(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli.main", "run", "-c", str(config)],
                          capture_output=True, text=True, timeout=30)


@pytest.fixture
def certs(tmp_path: Path) -> dict[str, Path]:
    root = CA.create_root("Root")
    edge = root.create_child_ca("Edge CA")
    other = root.create_child_ca("Other")
    return {
        "root": root.cert_pem.write_to_path(tmp_path / "root.pem"),
        "edge": edge.cert_pem.write_to_path(tmp_path / "edge.pem"),
        "edge_key": edge.private_key_pem.write_to_path(tmp_path / "edge.key", private=True),
        "other_key": other.private_key_pem.write_to_path(tmp_path / "other.key", private=True),
    }


def provided(certs: dict[str, Path], key: str = "edge_key") -> str:
    return (f'hostname = "edgegateway.local"\ntrust_bundle_cert = "{certs["root"]}"\nstate_dir = "state"\n'
            f'[edge_ca]\ncert = "{certs["edge"]}"\npk = "{certs[key]}"\n')


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("unknown_key", ["[hostnme]", "hostname"]),
        ("missing_file", ["no-such.toml"]),
        ("bad_hostname", ["[hostname]", "edge_gateway.local"]),
        ("unreadable_key", ["[edge_ca.pk]", "chmod 600"]),
        ("key_mismatch", ["edge_ca", "does not match"]),
    ],
)
def test_bad_config_exits_2_naming_the_key(case: str, expected: list[str], tmp_path: Path,
                                           certs: dict[str, Path]) -> None:
    config = tmp_path / "config.toml"
    if case == "unknown_key":
        config.write_text('hostnme = "edgegateway.local"\n')
    elif case == "missing_file":
        config = tmp_path / "no-such.toml"
    elif case == "bad_hostname":
        config.write_text('hostname = "edge_gateway.local"\n')
    elif case == "unreadable_key":
        certs["edge_key"].chmod(0o644)
        config.write_text(provided(certs))
    elif case == "key_mismatch":
        config.write_text(provided(certs, "other_key"))
    done = run(config)
    assert done.returncode == 2, done.stdout + done.stderr
    for text in expected:
        assert text in done.stderr, done.stderr
    assert not (tmp_path / "state").exists()

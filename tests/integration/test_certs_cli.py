"""`edgegate certs` as a user runs it, with openssl as the outside witness."""

from __future__ import annotations

import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def edgegate(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli.main", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=60)


def openssl(*args: str) -> str:
    done = subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=30)
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("certgen")
    for verb in (["create-root-and-intermediate"], ["create-edge-ca", "my-edge-ca"],
                 ["create-server", "edgegateway.local", "192.168.1.10", "--issuer", "my-edge-ca"],
                 ["create-device", "sensor-ss", "--self-signed"], ["create-device", "sensor-ca"],
                 ["create-identity", "edge-gw-1"], ["create-device", "sensor-rsa", "--key-type", "rsa-2048"]):
        done = edgegate("certs", *verb, cwd=d)
        assert done.returncode == 0, done.stderr
        assert "wrote certs/" in done.stdout
    return d / "certs"


def test_server_chain_verifies_with_openssl(pki: Path) -> None:
    out = openssl("verify", "-CAfile", str(pki / "root.cert.pem"), "-untrusted", str(pki / "my-edge-ca.cert.pem"),
                  str(pki / "edgegateway.local.server.cert.pem"))
    assert out.strip().endswith(": OK")
    negative = openssl("verify", "-CAfile", str(pki / "root.cert.pem"), str(pki / "edgegateway.local.server.cert.pem"))
    assert "OK" not in negative.splitlines()[-1]  # without the intermediates there is no path


def test_extensions_as_openssl_shows_them(pki: Path) -> None:
    server = openssl("x509", "-in", str(pki / "edgegateway.local.server.cert.pem"), "-noout", "-text")
    assert "CA:FALSE" in server
    assert "TLS Web Server Authentication" in server
    assert "Digital Signature" in server
    assert "DNS:edgegateway.local" in server
    assert "IP Address:192.168.1.10" in server
    assert "Subject Key Identifier" in server
    assert "Authority Key Identifier" in server
    edge = openssl("x509", "-in", str(pki / "my-edge-ca.cert.pem"), "-noout", "-text")
    assert re.search(r"CA:TRUE, pathlen:0", edge)
    assert "Certificate Sign, CRL Sign" in edge
    device = openssl("x509", "-in", str(pki / "sensor-ca.cert.pem"), "-noout", "-text")
    assert "TLS Web Client Authentication" in device
    assert "rsaEncryption" in openssl("x509", "-in", str(pki / "sensor-rsa.cert.pem"), "-noout", "-text")


def test_thumbprint_matches_openssl(pki: Path) -> None:
    ours = edgegate("certs", "thumbprint", str(pki / "sensor-ss.cert.pem"), cwd=pki).stdout
    theirs = openssl("x509", "-in", str(pki / "sensor-ss.cert.pem"), "-noout", "-fingerprint", "-sha256")
    colon = theirs.strip().split("=", 1)[1]
    assert f"SHA-256 Fingerprint={colon}" in ours
    assert f"SHA-256 (IoT Hub)={colon.replace(':', '')}" in ours
    sha1 = openssl("x509", "-in", str(pki / "sensor-ss.cert.pem"), "-noout", "-fingerprint", "-sha1")
    assert f"SHA-1 Fingerprint={sha1.strip().split('=', 1)[1]}" in ours


def test_keys_are_0600_and_never_overwritten(pki: Path) -> None:
    for key in pki.glob("*.key.pem"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    again = edgegate("certs", "create-edge-ca", "my-edge-ca", cwd=pki.parent)
    assert again.returncode == 2
    assert "exists; pass --force" in again.stderr


def test_verify_verb_and_its_negative_control(pki: Path) -> None:
    good = edgegate("certs", "verify", str(pki / "edgegateway.local.server.cert.pem"), "--ca-file",
                    str(pki / "root.cert.pem"), "--hostname", "edgegateway.local", cwd=pki)
    assert good.returncode == 0
    assert "OK" in good.stdout
    bad = edgegate("certs", "verify", str(pki / "edgegateway.local.server.cert.pem"), "--ca-file",
                   str(pki / "root.cert.pem"), "--hostname", "other.local", cwd=pki)
    assert bad.returncode == 1
    assert "hostname_mismatch" in bad.stdout


def test_missing_issuer_is_a_clear_error(tmp_path: Path) -> None:
    done = edgegate("certs", "create-edge-ca", "lonely", cwd=tmp_path)
    assert done.returncode == 2
    assert "run create-root-and-intermediate" in done.stderr

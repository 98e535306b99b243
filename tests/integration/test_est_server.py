"""hub-mock's EST server against RFC 7030's own witnesses: curl posting an `openssl req` CSR (base64,
application/pkcs10) with a client certificate, and `openssl pkcs7 -print_certs` reading the replies.
Every success has its negative control."""

from __future__ import annotations

import base64
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.pki import CA
from tests.estproc import EstHub
from tests.hubproc import run_cli

pytestmark = pytest.mark.integration


def run(*args: str, data: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(list(args), input=data, capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EstHub]:
    running = EstHub.start_est(tmp_path_factory.mktemp("rfc") / "hub")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def files(hub: EstHub, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bootstrap cert for gw1 made with openssl from the hub's bootstrap CA, and a key + CSR."""
    d = tmp_path_factory.mktemp("openssl")
    ca = hub.directory
    for step in (
        ["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{d}/boot.key"],
        ["openssl", "req", "-new", "-key", f"{d}/boot.key", "-subj", "/CN=gw1", "-out", f"{d}/boot.csr"],
        ["openssl", "x509", "-req", "-in", f"{d}/boot.csr", "-CA", f"{ca}/est-bootstrap-ca.pem", "-CAkey",
         f"{ca}/est-bootstrap-ca.key", "-CAcreateserial", "-days", "2", "-out", f"{d}/boot.pem"],
        ["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{d}/id.key"],
    ):
        assert run(*step).returncode == 0, step
    csr(d, "id.key", "/CN=gw1", "id.csr.b64")
    return d


def csr(d: Path, key: str, subject: str, out: str) -> Path:
    der = run("openssl", "req", "-new", "-key", str(d / key), "-subj", subject, "-outform", "DER").stdout
    (d / out).write_bytes(base64.encodebytes(der))
    return d / out


def curl(hub: EstHub, path: str, *extra: str, body: Path | None = None, ca: Path | None = None,
         content_type: str = "application/pkcs10") -> tuple[int, dict[str, str], bytes]:
    """(HTTP status or -curl exit code, headers, body)."""
    args = ["curl", "-sS", "--cacert", str(ca or hub.hub_root), "-D", "-", *extra]
    if body is not None:
        args += ["-H", f"Content-Type: {content_type}", "-H", "Content-Transfer-Encoding: base64",
                 "--data-binary", f"@{body}"]
    done = run(*args, f"{hub.est_url}{path}")
    if done.returncode != 0:
        return -done.returncode, {}, done.stderr
    head, _, payload = done.stdout.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, payload


def print_certs(payload: bytes) -> str:
    done = run("openssl", "pkcs7", "-inform", "DER", "-print_certs", "-noout", data=base64.b64decode(payload))
    assert done.returncode == 0, done.stderr
    return done.stdout.decode()


def x509_text(payload: bytes) -> str:
    pem = run("openssl", "pkcs7", "-inform", "DER", "-print_certs", data=base64.b64decode(payload)).stdout
    return run("openssl", "x509", "-noout", "-text", data=pem).stdout.decode()


def test_cacerts_is_pkcs7_certs_only_with_the_est_ca_and_its_root(hub: EstHub) -> None:
    status, headers, payload = curl(hub, "/cacerts")
    assert status == 200
    assert headers["content-type"].startswith("application/pkcs7-mime")
    assert headers["content-transfer-encoding"] == "base64"
    printed = print_certs(payload)
    assert "subject=CN = edgegate hub-mock EST CA" in printed
    assert "subject=CN = edgegate hub-mock EST root" in printed
    # Negative control: a client that trusts another root does not get through TLS.
    assert curl(hub, "/cacerts", ca=hub.est_root)[0] == -60


def test_simpleenroll_with_a_bootstrap_cert_issues_a_client_identity(hub: EstHub, files: Path) -> None:
    status, headers, payload = curl(hub, "/simpleenroll", "--cert", f"{files}/boot.pem", "--key",
                                    f"{files}/boot.key", body=files / "id.csr.b64")
    assert status == 200, payload
    assert headers["content-type"] == "application/pkcs7-mime; smime-type=certs-only"
    printed = print_certs(payload)
    assert "subject=CN = gw1\nissuer=CN = edgegate hub-mock EST CA" in printed
    text = x509_text(payload)
    assert "CA:FALSE" in text
    assert "TLS Web Client Authentication" in text
    # The issued certificate carries the key of the CSR.
    pem = run("openssl", "pkcs7", "-inform", "DER", "-print_certs", data=base64.b64decode(payload)).stdout
    issued_key = run("openssl", "x509", "-noout", "-pubkey", data=pem).stdout
    assert issued_key == run("openssl", "pkey", "-in", f"{files}/id.key", "-pubout").stdout
    (files / "id.pem").write_bytes(pem)
    issued = hub.est_view()["issued"]
    assert any(i["subject"] == "CN=gw1" and i["client"] == "bootstrap:gw1" for i in issued)


def test_simpleenroll_refusals(hub: EstHub, files: Path, tmp_path: Path) -> None:
    boot = ("--cert", f"{files}/boot.pem", "--key", f"{files}/boot.key")
    status, _, payload = curl(hub, "/simpleenroll", body=files / "id.csr.b64")
    assert (status, payload.split(b":")[0]) == (401, b"client_certificate_required")
    status, _, payload = curl(hub, "/simpleenroll", *boot, body=csr(files, "id.key", "/CN=gw2", "gw2.csr.b64"))
    assert status == 400
    assert payload.startswith(b"policy_violation: an identity certificate's CN must be the authenticated")
    status, _, payload = curl(hub, "/simpleenroll", *boot, body=files / "id.csr.b64", content_type="text/plain")
    assert status == 415
    (tmp_path / "junk.b64").write_bytes(base64.encodebytes(b"not a CSR"))
    assert curl(hub, "/simpleenroll", *boot, body=tmp_path / "junk.b64")[0] == 400
    # A bootstrap certificate from a CA the EST server does not know never gets an answer.
    stranger = CA.create_root("Stranger CA").issue_identity_cert("gw1")
    cert = stranger.cert_pem.write_to_path(tmp_path / "s.pem")
    key = stranger.private_key_pem.write_to_path(tmp_path / "s.key", private=True)
    assert curl(hub, "/simpleenroll", "--cert", str(cert), "--key", str(key), body=files / "id.csr.b64")[0] < 0


def test_simplereenroll_renews_only_the_presented_identity(hub: EstHub, files: Path) -> None:
    if not (files / "id.pem").exists():
        pytest.skip("needs the identity from the simpleenroll test")
    identity = ("--cert", f"{files}/id.pem", "--key", f"{files}/id.key")
    status, _, payload = curl(hub, "/simplereenroll", *identity, body=files / "id.csr.b64")
    assert status == 200, payload
    assert "subject=CN = gw1" in print_certs(payload)
    status, _, payload = curl(hub, "/simplereenroll", "--cert", f"{files}/boot.pem", "--key",
                              f"{files}/boot.key", body=files / "id.csr.b64")
    assert (status, payload.split(b":")[0]) == (403, b"reenroll_needs_identity")
    status, _, payload = curl(hub, "/simplereenroll", *identity, body=csr(files, "id.key", "/CN=gw9", "g9.b64"))
    assert (status, payload.split(b":")[0]) == (400, b"reenroll_subject_mismatch")
    # The edge-ca label issues a CA (pathlen 0) to an authenticated gateway.
    run("openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{files}/ca.key")
    status, _, payload = curl(hub, "/edge-ca/simpleenroll", *identity,
                              body=csr(files, "ca.key", "/CN=gw1 Edge CA", "ca.b64"))
    assert status == 200, payload
    assert "CA:TRUE, pathlen:0" in x509_text(payload)
    status, _, payload = curl(hub, "/edge-ca/simpleenroll", *identity,
                              body=csr(files, "ca.key", "/CN=gw2 Edge CA", "ca2.b64"))
    assert (status, payload.split(b":")[0]) == (400, b"policy_violation")


def test_the_hub_accepts_an_est_identity_without_its_thumbprint(hub: EstHub, files: Path) -> None:
    if not (files / "id.pem").exists():
        pytest.skip("needs the identity from the simpleenroll test")
    hub.admin.add_gateway("gw1", thumbprint="11" * 32)
    url = f"https://127.0.0.1:{hub.api_port}/gateways/gw1/cas"
    ok = run("curl", "-sS", "--cacert", str(hub.hub_root), "--cert", f"{files}/id.pem", "--key",
             f"{files}/id.key", "-w", "%{http_code}", "-o", "/dev/null", url)
    assert ok.stdout == b"200"
    # Negative control: the bootstrap certificate is not an identity the hub accepts.
    refused = run("curl", "-sS", "--cacert", str(hub.hub_root), "--cert", f"{files}/boot.pem", "--key",
                  f"{files}/boot.key", "-w", "%{http_code}", "-o", "/dev/null", url)
    assert refused.stdout != b"200"


def test_fault_switches_act_on_the_est_port_only(hub: EstHub) -> None:
    hub.est_fault("error", 503)
    try:
        assert curl(hub, "/cacerts")[0] == 503
    finally:
        hub.est_fault("clear")
    hub.est_fault("down")
    try:
        assert curl(hub, "/cacerts")[0] == -7  # curl: failed to connect
        assert hub.admin.health()
    finally:
        hub.est_fault("up")
    assert curl(hub, "/cacerts")[0] == 200


def test_http_basic_when_configured(tmp_path: Path) -> None:
    with EstHub.start_est(tmp_path / "hub", basic=("est", "s3cret")) as hub:
        status, headers, _ = curl(hub, "/csrattrs")
        assert status == 401
        assert headers["www-authenticate"].startswith("Basic")
        assert curl(hub, "/csrattrs", "-u", "est:s3cret")[0] == 204
        assert curl(hub, "/csrattrs", "-u", "est:wrong")[0] == 401


def test_hub_mock_est_cli(hub: EstHub, tmp_path: Path) -> None:
    done = run_cli("est", "bootstrap-cert", "gw7", "--dir", str(hub.directory), "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    key = tmp_path / "gw7-bootstrap.key"
    assert key.stat().st_mode & 0o077 == 0
    d = tmp_path
    run("openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{d}/k")
    status, _, _ = curl(hub, "/simpleenroll", "--cert", f"{d}/gw7-bootstrap.pem", "--key", str(key),
                        body=csr(d, "k", "/CN=gw7", "c.b64"))
    assert status == 200
    shown = hub.cli("est", "show")
    assert shown.returncode == 0
    assert re.search(r"simpleenroll +identity +CN=gw7 +bootstrap:gw7", shown.stdout), shown.stdout
    assert "bootstrap:gw7" in shown.stdout
    assert hub.cli("est", "policy", "--identity-lifetime", "60").returncode == 0
    assert hub.est_view()["policy"]["identity_lifetime"] == 60
    assert hub.cli("est", "policy", "--identity-lifetime", "1").returncode == 1  # under 5 s
    assert hub.cli("est", "misbehave", "garbage").stdout.strip() == "EST misbehave: garbage"
    assert hub.cli("est", "misbehave", "off").stdout.strip() == "EST misbehave: off"
    assert hub.cli("est", "fault", "error").returncode == 2

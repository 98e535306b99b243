"""`edgegate certs` and `edgegate check` as a user runs them: the real console script in subprocesses,
openssl as the outside witness, and a real TLS "hub" on loopback for the hub check (with negative controls:
a certificate for another name, an unknown root, a hub that refuses the gateway, nothing listening)."""

from __future__ import annotations

import json
import re
import socket
import ssl
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509

from gateway.pki import CA, IssuedCert, cert_pem
from gateway.pki.edge_ca import ensure_quickstart_edge_ca, ensure_server_cert

pytestmark = pytest.mark.integration

EDGEGATE = Path(sys.executable).with_name("edgegate")  # the console script pyproject.toml installs
MARKS = ("✔", "⚠", "✖")


def edgegate(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert EDGEGATE.exists(), f"{EDGEGATE} missing: pip install -e . in the venv"
    return subprocess.run([str(EDGEGATE), *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def openssl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=30)


# ---- edgegate certs ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """certGen.sh's sequence: root + intermediate, an Edge CA, the server cert, devices, the identity."""
    d = tmp_path_factory.mktemp("certgen")
    for verb in (["create-root-and-intermediate"], ["create-edge-ca", "my-edge-ca"],
                 ["create-server", "edgegateway.local", "192.168.1.10", "--issuer", "my-edge-ca"],
                 ["create-device", "sensor-ss", "--self-signed"], ["create-device", "sensor-ca"],
                 ["create-identity", "edge-gw-1"], ["create-device", "sensor-rsa", "--key-type", "rsa-2048"]):
        done = edgegate("certs", *verb, cwd=d)
        assert done.returncode == 0, done.stderr
        written = re.findall(r"^wrote (\S+)", done.stdout, re.MULTILINE)
        assert written, done.stdout
        assert all((d / w).exists() for w in written)
    return d / "certs"


def test_every_file_is_announced_and_named_predictably(pki: Path) -> None:
    assert sorted(p.name for p in pki.iterdir()) == sorted([
        "root.cert.pem", "root.key.pem", "intermediate.cert.pem", "intermediate.key.pem",
        "intermediate.fullchain.pem", "my-edge-ca.cert.pem", "my-edge-ca.key.pem",
        "edgegateway.local.server.cert.pem", "edgegateway.local.server.key.pem",
        "sensor-ss.cert.pem", "sensor-ss.key.pem", "sensor-ca.cert.pem", "sensor-ca.key.pem",
        "sensor-rsa.cert.pem", "sensor-rsa.key.pem", "edge-gw-1.identity.cert.pem", "edge-gw-1.identity.key.pem",
    ])


def subjects(path: Path) -> list[str]:
    out = openssl("crl2pkcs7", "-nocrl", "-certfile", str(path)).stdout
    text = subprocess.run(["openssl", "pkcs7", "-print_certs", "-noout"], input=out, capture_output=True, text=True,
                          timeout=30).stdout
    return re.findall(r"^subject=(.*)$", text, re.MULTILINE)


def test_chain_files_hold_what_the_wire_carries(pki: Path) -> None:
    assert subjects(pki / "edgegateway.local.server.cert.pem") == [
        "CN = edgegateway.local", "CN = my-edge-ca", "CN = edgegate Intermediate CA"]
    assert subjects(pki / "my-edge-ca.cert.pem") == ["CN = my-edge-ca", "CN = edgegate Intermediate CA"]
    assert subjects(pki / "sensor-ca.cert.pem") == ["CN = sensor-ca", "CN = edgegate Intermediate CA"]
    assert subjects(pki / "intermediate.fullchain.pem") == ["CN = edgegate Intermediate CA", "CN = edgegate Root CA"]


def test_openssl_verifies_the_server_chain_and_rejects_the_negative_controls(pki: Path) -> None:
    root, server = str(pki / "root.cert.pem"), str(pki / "edgegateway.local.server.cert.pem")
    intermediates = str(pki / "my-edge-ca.cert.pem")  # Edge CA + intermediate
    good = openssl("verify", "-CAfile", root, "-untrusted", intermediates, "-purpose", "sslserver",
                   "-verify_hostname", "edgegateway.local", server)
    assert good.returncode == 0, good.stderr
    assert good.stdout.strip() == f"{server}: OK"
    no_intermediates = openssl("verify", "-CAfile", root, server)
    assert no_intermediates.returncode != 0
    assert "unable to get local issuer certificate" in no_intermediates.stdout + no_intermediates.stderr
    wrong_name = openssl("verify", "-CAfile", root, "-untrusted", intermediates, "-verify_hostname", "edgegateway",
                         server)
    assert wrong_name.returncode != 0
    device = openssl("verify", "-CAfile", root, "-untrusted", str(pki / "sensor-ca.cert.pem"), "-purpose",
                     "sslclient", str(pki / "sensor-ca.cert.pem"))
    assert device.returncode == 0, device.stderr


def test_openssl_shows_the_extensions_and_the_san(pki: Path) -> None:
    server = openssl("x509", "-in", str(pki / "edgegateway.local.server.cert.pem"), "-noout", "-text").stdout
    assert re.search(r"X509v3 Basic Constraints: critical\s+CA:FALSE", server)
    assert re.search(r"X509v3 Key Usage: critical\s+Digital Signature\n", server)
    assert re.search(r"X509v3 Extended Key Usage:\s+TLS Web Server Authentication\n", server)
    assert re.search(r"X509v3 Subject Alternative Name:\s+DNS:edgegateway.local, IP Address:192.168.1.10\n", server)
    assert "X509v3 Subject Key Identifier" in server
    assert "X509v3 Authority Key Identifier" in server
    assert re.search(r"Subject: CN ?= ?edgegateway.local\n", server)
    edge = openssl("x509", "-in", str(pki / "my-edge-ca.cert.pem"), "-noout", "-text").stdout
    assert re.search(r"X509v3 Basic Constraints: critical\s+CA:TRUE, pathlen:0", edge)
    assert re.search(r"X509v3 Key Usage: critical\s+[^\n]*Certificate Sign, CRL Sign\n", edge)
    inter = openssl("x509", "-in", str(pki / "intermediate.cert.pem"), "-noout", "-text").stdout
    assert re.search(r"CA:TRUE, pathlen:1", inter)
    device = openssl("x509", "-in", str(pki / "sensor-ca.cert.pem"), "-noout", "-text").stdout
    assert re.search(r"X509v3 Extended Key Usage:\s+TLS Web Client Authentication\n", device)
    assert re.search(r"Subject: CN ?= ?sensor-ca\n", device)
    assert "Subject Alternative Name" not in device
    rsa = openssl("x509", "-in", str(pki / "sensor-rsa.cert.pem"), "-noout", "-text").stdout
    assert "rsaEncryption" in rsa
    assert "Public-Key: (2048 bit)" in rsa


@pytest.mark.parametrize("device", ["sensor-ss", "sensor-ca"])
def test_thumbprint_matches_openssl(pki: Path, device: str) -> None:
    path = str(pki / f"{device}.cert.pem")
    ours = edgegate("certs", "thumbprint", path, cwd=pki).stdout.splitlines()
    for algorithm, flag in (("SHA-256", "-sha256"), ("SHA-1", "-sha1")):
        theirs = openssl("x509", "-in", path, "-noout", "-fingerprint", flag).stdout.strip()
        colon = theirs.split("=", 1)[1]
        assert re.fullmatch(r"([0-9A-F]{2}:)+[0-9A-F]{2}", colon)
        assert f"{algorithm} Fingerprint={colon}" in ours
        assert f"{algorithm} (IoT Hub)={colon.replace(':', '')}" in ours


def test_self_signed_device_prints_its_thumbprint(tmp_path: Path) -> None:
    done = edgegate("certs", "create-device", "sensor-9", "--self-signed", cwd=tmp_path)
    printed = re.search(r"^SHA-256 thumbprint: ([0-9A-F]{64})$", done.stdout, re.MULTILINE)
    assert printed is not None, done.stdout
    fingerprint = openssl("x509", "-in", str(tmp_path / "certs" / "sensor-9.cert.pem"), "-noout", "-fingerprint",
                          "-sha256").stdout
    assert fingerprint.strip().split("=", 1)[1].replace(":", "") == printed[1]


def test_keys_are_0600_never_printed_and_never_overwritten(pki: Path) -> None:
    for key in pki.glob("*.key.pem"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    before = (pki / "my-edge-ca.cert.pem").read_bytes()
    again = edgegate("certs", "create-edge-ca", "my-edge-ca", cwd=pki.parent)
    assert again.returncode == 2
    assert again.stderr.count("\n") == 1
    assert "will not overwrite" in again.stderr
    assert "--force" in again.stderr
    assert (pki / "my-edge-ca.cert.pem").read_bytes() == before
    assert "PRIVATE KEY" not in again.stdout + again.stderr


def test_a_partial_conflict_writes_nothing_and_force_replaces(tmp_path: Path) -> None:
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "intermediate.key.pem").write_text("keep me")
    refused = edgegate("certs", "create-root-and-intermediate", cwd=tmp_path)
    assert refused.returncode == 2
    assert sorted(p.name for p in (tmp_path / "certs").iterdir()) == ["intermediate.key.pem"]
    forced = edgegate("certs", "create-root-and-intermediate", "--force", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert "PRIVATE KEY" not in forced.stdout
    key = tmp_path / "certs" / "intermediate.key.pem"
    assert key.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["create-edge-ca", "lonely"], "run create-root-and-intermediate"),
        (["create-device", "d1", "--issuer", "nope/nothing"], "nope/nothing.cert.pem"),
        (["create-root-and-intermediate", "--key-type", "dsa"], "--key-type 'dsa' is not one of"),
        (["create-device", "d1", "--self-signed", "--days", "0"], "--days must be at least 1"),
        (["thumbprint", "missing.pem"], "cannot read certificate file missing.pem"),
    ],
    ids=["missing-issuer", "missing-issuer-path", "bad-key-type", "bad-days", "missing-file"],
)
def test_errors_are_one_line_and_exit_2(tmp_path: Path, args: list[str], words: str) -> None:
    done = edgegate("certs", *args, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1, done.stderr
    assert words in done.stderr
    assert not (tmp_path / "certs").exists()


def test_issuer_as_a_path_prefix_and_a_leaf_is_no_issuer(pki: Path, tmp_path: Path) -> None:
    done = edgegate("certs", "create-edge-ca", "edge-2", "--issuer", str(pki / "intermediate"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "certs" / "edge-2.cert.pem").exists()
    leaf = edgegate("certs", "create-device", "d1", "--issuer", str(pki / "sensor-ca"), cwd=tmp_path)
    assert leaf.returncode == 2
    assert "is not a CA certificate" in leaf.stderr


def test_chain_shows_each_certificate_leaf_first(pki: Path, tmp_path: Path) -> None:
    reversed_file = tmp_path / "reversed.pem"
    reversed_file.write_bytes((pki / "root.cert.pem").read_bytes() + (pki / "intermediate.cert.pem").read_bytes()
                              + (pki / "edgegateway.local.server.cert.pem").read_bytes())
    out = edgegate("certs", "chain", str(reversed_file), cwd=tmp_path).stdout
    assert re.findall(r"^\[\d\] subject:\s+(.*)$", out, re.MULTILINE) == [
        "CN=edgegateway.local", "CN=my-edge-ca", "CN=edgegate Intermediate CA", "CN=edgegate Root CA"]
    assert "CA:       FALSE" in out
    assert "CA:       TRUE, pathlen 0" in out
    assert "EKU:      serverAuth" in out
    assert "SAN:      edgegateway.local, 192.168.1.10" in out


def test_verify_verb_and_its_negative_controls(pki: Path) -> None:
    server, root = str(pki / "edgegateway.local.server.cert.pem"), str(pki / "root.cert.pem")
    good = edgegate("certs", "verify", server, "--ca-file", root, "--hostname", "edgegateway.local", cwd=pki)
    assert good.returncode == 0, good.stdout + good.stderr
    assert f"{server}: OK (server for edgegateway.local)" in good.stdout
    wrong_name = edgegate("certs", "verify", server, "--ca-file", root, "--hostname", "other.local", cwd=pki)
    assert wrong_name.returncode == 1
    assert "FAILED (hostname_mismatch)" in wrong_name.stdout
    wrong_root = edgegate("certs", "verify", server, "--ca-file", str(pki / "sensor-ss.cert.pem"), "--hostname",
                          "edgegateway.local", cwd=pki)
    assert wrong_root.returncode == 1
    as_client = edgegate("certs", "verify", server, "--ca-file", root, "--purpose", "client", cwd=pki)
    assert as_client.returncode == 1
    assert "eku_not_client_auth" in as_client.stdout
    device = edgegate("certs", "verify", str(pki / "sensor-ca.cert.pem"), "--ca-file", root, cwd=pki)
    assert device.returncode == 0, device.stdout
    lone = pki.parent / "lone-device.pem"
    lone.write_bytes((pki / "sensor-ca.cert.pem").read_bytes().split(b"-----END CERTIFICATE-----")[0]
                     + b"-----END CERTIFICATE-----\n")
    incomplete = edgegate("certs", "verify", str(lone), "--ca-file", root, cwd=pki)
    assert incomplete.returncode == 1
    supplied = edgegate("certs", "verify", str(lone), "--ca-file", root, "--untrusted",
                        str(pki / "intermediate.cert.pem"), cwd=pki)
    assert supplied.returncode == 0, supplied.stdout


# ---- a gateway's state, a config.toml, and a hub on loopback -------------------------------------------

CLOCK = datetime.now(UTC)  # OpenSSL checks the hub's certificate against the real clock
HUB_ROOT = CA.create_root("Hub Root", now=CLOCK)
IDENTITY_ROOT = CA.create_root("Gateway Identity Issuer", now=CLOCK)
STRANGER = CA.create_root("Stranger Root", now=CLOCK)
IDENTITY = IDENTITY_ROOT.issue_identity_cert("edge-gw-1", now=CLOCK)


class TinyHub:
    """A TLS server standing in for the hub's HTTPS API: mutual TLS, answers any request with a 404."""

    def __init__(self, server: IssuedCert, trusts: CA, tmp: Path) -> None:
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(server.fullchain_pem().write_to_path(tmp / "hub-server.pem"),
                                 server.private_key_pem.write_to_path(tmp / "hub-server.key", private=True))
        self.ctx.verify_mode = ssl.CERT_REQUIRED
        self.ctx.load_verify_locations(cadata=cert_pem(trusts.cert).decode())
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.clients: list[str] = []  # subject of each client that completed mutual TLS and got an answer
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            conn.settimeout(5)
            try:
                with self.ctx.wrap_socket(conn, server_side=True) as tls:
                    request = b""
                    while b"\r\n\r\n" not in request and (chunk := tls.recv(1024)):
                        request += chunk
                    tls.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    client = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True) or b"")
                    self.clients.append(client.subject.rfc4514_string())
            except (ssl.SSLError, OSError):
                conn.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.listener.close()


def write_gateway(directory: Path, hub_port: int | None, *, server_cert: bool = True) -> Path:
    """A quickstart gateway as `edgegate run` leaves it: config.toml, state_dir/pki, migrated database."""
    directory.mkdir(parents=True, exist_ok=True)
    hub = ""
    if hub_port is not None:
        IDENTITY.fullchain_pem().write_to_path(directory / "identity.pem")
        IDENTITY.private_key_pem.write_to_path(directory / "identity.key", private=True)
        HUB_ROOT.cert_pem.write_to_path(directory / "hub-root.pem")
        hub = (f'[hub]\nhostname = "hub.local"\nurl = "https://127.0.0.1:{hub_port}"\ngateway_id = "edge-gw-1"\n'
               'identity_cert = "identity.pem"\nidentity_pk = "identity.key"\ntrust_bundle_cert = "hub-root.pem"\n')
    config = directory / "config.toml"
    config.write_text(f'hostname = "edgegateway.local"\nalt_names = ["127.0.0.1"]\nstate_dir = "state"\n\n{hub}')
    material = ensure_quickstart_edge_ca(directory / "state", now=CLOCK)
    if server_cert:
        ensure_server_cert(directory / "state", material.ca, "edgegateway.local", ["127.0.0.1"], now=CLOCK)
    migrated = edgegate("db", "upgrade", "-c", str(config), cwd=directory)
    assert migrated.returncode == 0, migrated.stderr
    return config


@pytest.fixture
def hub(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TinyHub]:
    server, trusts = request.param if hasattr(request, "param") else (HUB_ROOT.issue_server_cert("hub.local"),
                                                                       IDENTITY_ROOT)
    tiny = TinyHub(server, trusts, tmp_path)
    yield tiny
    tiny.close()


def check(config: Path) -> tuple[int, list[tuple[str, str, str]]]:
    """Run `edgegate check`; (exit code, [(mark, title, detail)]) parsed from the human output."""
    done = edgegate("check", "-c", str(config), cwd=config.parent)
    results: list[tuple[str, str, str]] = []
    for line in done.stdout.splitlines():
        if line[:1] in MARKS:
            results.append((line[0], line[2:], ""))
        else:
            assert line.startswith("    "), line
            mark, title, _ = results[-1]
            results[-1] = (mark, title, line.strip())
    assert results, done.stdout + done.stderr
    return done.returncode, results


def find(results: list[tuple[str, str, str]], title_start: str) -> tuple[str, str]:
    matches = [(mark, detail) for mark, title, detail in results if title.startswith(title_start)]
    assert len(matches) == 1, (title_start, results)
    return matches[0]


def test_check_on_a_good_quickstart_gateway_is_all_ok_or_warnings(tmp_path: Path, hub: TinyHub) -> None:
    config = write_gateway(tmp_path / "gw", hub.port)
    code, results = check(config)
    assert code == 0, results
    assert {mark for mark, _, _ in results} <= {"✔", "⚠"}
    assert find(results, "config.toml parses")[0] == "✔"
    keys = find(results, "private keys are readable only by their owner")
    assert keys == ("✔", "4 key file(s), mode 0600 or tighter")  # identity, quickstart root, Edge CA, server
    assert find(results, "Edge CA is valid")[0] == "⚠"
    assert "not for production" in find(results, "Edge CA is valid")[1]
    assert find(results, "server certificate is valid")[0] == "✔"
    assert find(results, "server certificate is for edgegateway.local")[0] == "✔"
    chain = find(results, "server certificate chain verifies against the trust bundle")
    assert chain == ("✔", "CN=edgegateway.local <- CN=edgegate quickstart Edge CA <- CN=edgegate quickstart root")
    hub_line = find(results, "hub hub.local reachable")
    assert hub_line[0] == "✔", hub_line
    assert hub.clients == ["CN=edge-gw-1"]  # the check presented the gateway's identity and was answered
    assert find(results, "database")[0] == "✔"


def test_check_json_has_the_same_verdicts(tmp_path: Path, hub: TinyHub) -> None:
    config = write_gateway(tmp_path / "gw", hub.port)
    done = edgegate("check", "-c", str(config), "--json", cwd=tmp_path)
    assert done.returncode == 0
    verdicts = json.loads(done.stdout)
    assert {v["status"] for v in verdicts} <= {"ok", "warning"}
    assert next(v for v in verdicts if v["check"].startswith("hub "))["status"] == "ok"


def test_check_issues_a_server_cert_in_memory_when_none_is_stored(tmp_path: Path) -> None:
    config = write_gateway(tmp_path / "gw", None, server_cert=False)
    code, results = check(config)
    assert code == 0, results
    mark, detail = find(results, "server certificate chain verifies against the trust bundle")
    assert mark == "✔"
    assert "issued in memory" in detail
    assert not (tmp_path / "gw" / "state" / "pki" / "server").exists()  # a check writes nothing


@pytest.mark.parametrize(
    ("hub", "words"),
    [
        ((HUB_ROOT.issue_server_cert("not-the-hub.local", now=CLOCK), IDENTITY_ROOT), "wrong hostname: "),
        ((STRANGER.issue_server_cert("hub.local", now=CLOCK), IDENTITY_ROOT), "untrusted root: "),
        ((HUB_ROOT.issue_server_cert("hub.local", now=CLOCK), STRANGER), "identity rejected: "),
    ],
    ids=["wrong-hostname", "untrusted-root", "identity-rejected"],
    indirect=["hub"],
)
def test_check_names_what_is_wrong_with_the_hub(tmp_path: Path, hub: TinyHub, words: str) -> None:
    config = write_gateway(tmp_path / "gw", hub.port)
    code, results = check(config)
    assert code == 1
    mark, detail = find(results, "hub hub.local reachable")
    assert mark == "✖"
    assert detail.startswith(words), detail
    assert [m for m, title, _ in results if m == "✖"] == ["✖"]  # nothing else is wrong with this gateway


def test_check_when_nothing_listens_at_the_hub(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    config = write_gateway(tmp_path / "gw", port)
    code, results = check(config)
    assert code == 1
    assert find(results, "hub hub.local reachable") == ("✖", "refused: connection refused: nothing listens at hub.url")


def test_check_finds_a_loose_gateway_key_and_a_broken_config(tmp_path: Path) -> None:
    config = write_gateway(tmp_path / "gw", None)
    edge_key = tmp_path / "gw" / "state" / "pki" / "edge-ca.key"
    edge_key.chmod(0o640)
    code, results = check(config)
    assert code == 1
    loose = find(results, "private keys are readable only")
    assert loose == ("✖", f"{edge_key} has mode 0640: run chmod 600 {edge_key}")
    edge_key.chmod(0o600)
    assert check(config)[0] == 0  # the control: the same gateway with the key tightened
    config.write_text(config.read_text() + 'hostnme = "typo"\n')
    code, results = check(config)
    assert code == 1
    assert len(results) == 1
    mark, title, detail = results[0]
    assert (mark, title) == ("✖", "config.toml parses")
    assert "did you mean 'hostname'" in detail


def test_trust_bundle_exports_the_quickstart_root(tmp_path: Path) -> None:
    config = write_gateway(tmp_path / "gw", None)
    out = tmp_path / "bundle.pem"
    done = edgegate("certs", "trust-bundle", "-c", str(config), "--out", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"wrote {out}" in done.stdout
    assert out.read_bytes() == (tmp_path / "gw" / "state" / "pki" / "quickstart-root.pem").read_bytes()
    server = tmp_path / "gw" / "state" / "pki" / "server" / "server.pem"
    verified = openssl("verify", "-CAfile", str(out), "-untrusted", str(server), "-verify_hostname",
                       "edgegateway.local", str(server))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    again = edgegate("certs", "trust-bundle", "-c", str(config), "--out", str(out), cwd=tmp_path)
    assert again.returncode == 2
    assert edgegate("certs", "trust-bundle", "-c", str(config), "--out", str(out), "--force",
                    cwd=tmp_path).returncode == 0

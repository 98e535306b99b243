"""The PKI: extensions, chain verdicts (cryptography.x509.verification and openssl verify as a witness),
key file modes, quickstart Edge CA life cycle and the server certificate's rules."""

from __future__ import annotations

import stat
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from gateway.errors import PKIError
from gateway.pki import CA, KeyType, verify_chain
from gateway.pki.edge_ca import ensure_quickstart_edge_ca, ensure_server_cert, validate_provided_edge_ca

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)
ROOT = CA.create_root("Root", now=NOW - 10 * DAY, path_length=2)
INTER = ROOT.create_child_ca("Intermediate", path_length=1, now=NOW - 10 * DAY)
EDGE = INTER.create_child_ca("Edge CA", path_length=0, now=NOW - 10 * DAY)
SERVER = EDGE.issue_server_cert("edgegateway.local", "10.1.2.3", now=NOW - DAY)


def ext(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> x509.Extension[x509.ExtensionType]:
    return cert.extensions.get_extension_for_class(kind)


def test_ca_extensions() -> None:
    bc = ext(EDGE.cert, x509.BasicConstraints)
    assert bc.critical
    assert bc.value.ca is True
    assert bc.value.path_length == 0
    ku = ext(EDGE.cert, x509.KeyUsage).value
    assert ku.key_cert_sign
    assert ku.crl_sign
    ext(EDGE.cert, x509.SubjectKeyIdentifier)
    ext(EDGE.cert, x509.AuthorityKeyIdentifier)


def test_server_leaf_extensions() -> None:
    cert = SERVER.cert
    assert ext(cert, x509.BasicConstraints).value.ca is False
    assert ext(cert, x509.KeyUsage).value.digital_signature
    assert list(ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    san = ext(cert, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["edgegateway.local"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.1.2.3"]
    assert cert.not_valid_after_utc - (NOW - DAY) <= timedelta(days=30)  # from issuance (backdated for skew)


def test_rsa_on_request() -> None:
    rsa_root = CA.create_root("RSA Root", key_type=KeyType.RSA_2048)
    assert rsa_root.cert.public_key().key_size == 2048  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("hostname", "at", "intermediates", "expected"),
    [
        ("edgegateway.local", NOW, [EDGE.cert, INTER.cert], "ok"),
        ("10.1.2.3", NOW, [EDGE.cert, INTER.cert], "ok"),
        ("other.local", NOW, [EDGE.cert, INTER.cert], "hostname_mismatch"),
        ("edgegateway.local", NOW, [EDGE.cert], "chain_incomplete"),
        ("edgegateway.local", NOW + 60 * DAY, [EDGE.cert, INTER.cert], "expired_or_not_yet_valid"),
        ("edgegateway.local", NOW - 5 * DAY, [EDGE.cert, INTER.cert], "expired_or_not_yet_valid"),
    ],
)
def test_server_chain_verdicts(hostname: str, at: datetime, intermediates: list[x509.Certificate],
                               expected: str) -> None:
    verdict = verify_chain(SERVER.cert, intermediates, [ROOT.cert], now=at, purpose="server", hostname=hostname)
    assert verdict.reason == expected, verdict.detail


def test_client_chain_rejects_issuer_without_ca_flag_and_pathlen_violation() -> None:
    fake_ca = INTER.create_child_ca("Not A CA", ca_flag=False, now=NOW - DAY)
    leaf = fake_ca.issue_device_cert("dev", now=NOW - DAY)
    verdict = verify_chain(leaf.cert, [fake_ca.cert, INTER.cert], [ROOT.cert], now=NOW, purpose="client")
    assert verdict.reason == "issuer_not_ca"
    too_deep = EDGE.create_child_ca("Below pathlen 0", now=NOW - DAY)
    leaf = too_deep.issue_device_cert("dev", now=NOW - DAY)
    verdict = verify_chain(leaf.cert, [too_deep.cert, EDGE.cert, INTER.cert], [ROOT.cert], now=NOW, purpose="client")
    assert verdict.reason == "path_length_exceeded"
    server_only = INTER.issue_device_cert("dev", eku=("serverAuth",), now=NOW - DAY)
    verdict = verify_chain(server_only.cert, [INTER.cert], [ROOT.cert], now=NOW, purpose="client")
    assert verdict.reason == "eku_not_client_auth"


def test_openssl_verify_agrees(tmp_path: Path) -> None:
    root = ROOT.cert_pem.write_to_path(tmp_path / "root.pem")
    untrusted = EDGE.chain_pem().write_to_path(tmp_path / "chain.pem")
    leaf = SERVER.cert_pem.write_to_path(tmp_path / "leaf.pem")
    ok = subprocess.run(["openssl", "verify", "-attime", str(int(NOW.timestamp())), "-CAfile", str(root),
                         "-untrusted", str(untrusted), "-verify_hostname", "edgegateway.local", str(leaf)],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    wrong = subprocess.run(["openssl", "verify", "-attime", str(int(NOW.timestamp())), "-CAfile", str(root),
                            "-untrusted", str(untrusted), "-verify_hostname", "other.local", str(leaf)],
                           capture_output=True, text=True)
    assert wrong.returncode != 0


def test_key_files_are_0600(tmp_path: Path) -> None:
    path = SERVER.private_key_pem.write_to_path(tmp_path / "k.pem", private=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_quickstart_reuses_root_and_renews_edge_ca_under_it(tmp_path: Path) -> None:
    first = ensure_quickstart_edge_ca(tmp_path, expiry_days=90, threshold=0.8, now=NOW)
    again = ensure_quickstart_edge_ca(tmp_path, expiry_days=90, threshold=0.8, now=NOW + DAY)
    assert again.ca.cert == first.ca.cert
    renewed = ensure_quickstart_edge_ca(tmp_path, expiry_days=90, threshold=0.8, now=NOW + 80 * DAY)
    assert renewed.ca.cert != first.ca.cert
    assert renewed.ca.root == first.ca.root  # children never re-trust
    assert stat.S_IMODE((tmp_path / "pki" / "quickstart-root.key").stat().st_mode) == 0o600


def test_server_cert_reissued_on_name_change_and_capped_by_edge_ca(tmp_path: Path) -> None:
    short_edge = INTER.create_child_ca("Short Edge CA", now=NOW - DAY, days=10)
    first = ensure_server_cert(tmp_path, short_edge, "edgegateway.local", now=NOW)
    assert first.issued
    assert first.cert.not_valid_after_utc <= short_edge.cert.not_valid_after_utc
    assert not ensure_server_cert(tmp_path, short_edge, "edgegateway.local", now=NOW).issued
    assert ensure_server_cert(tmp_path, short_edge, "gateway2.local", now=NOW).issued


def test_provided_edge_ca_problems_each_have_a_sentence(tmp_path: Path) -> None:
    root_path = ROOT.cert_pem.write_to_path(tmp_path / "root.pem")
    key = EDGE.private_key_pem.write_to_path(tmp_path / "edge.key", private=True)
    chain = EDGE.chain_pem().write_to_path(tmp_path / "edge.pem")
    assert validate_provided_edge_ca(chain, key, root_path, now=NOW).ca.cert == EDGE.cert
    lonely = EDGE.cert_pem.write_to_path(tmp_path / "edge-only.pem")
    with pytest.raises(PKIError, match="does not reach"):
        validate_provided_edge_ca(lonely, key, root_path, now=NOW)
    other_key = INTER.private_key_pem.write_to_path(tmp_path / "other.key", private=True)
    with pytest.raises(PKIError, match="is not the private key"):
        validate_provided_edge_ca(chain, other_key, root_path, now=NOW)
    with pytest.raises(PKIError, match="expired"):
        validate_provided_edge_ca(chain, key, root_path, now=NOW + 400 * DAY)
    leaf = SERVER.cert_pem.write_to_path(tmp_path / "leaf.pem")
    leaf_key = SERVER.private_key_pem.write_to_path(tmp_path / "leaf.key", private=True)
    with pytest.raises(PKIError, match="not a CA"):
        validate_provided_edge_ca(leaf, leaf_key, root_path, now=NOW)

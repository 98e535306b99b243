"""The PKI: extensions, chain verdicts (cryptography.x509.verification, with `openssl verify` as an outside
witness), key file modes, the quickstart Edge CA's life cycle and the server certificate's rules."""

from __future__ import annotations

import stat
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from gateway.errors import PKIError
from gateway.pki import CA, IssuedCert, KeyType, cert_pem, self_signed_device_cert, verify_chain, write_private_key
from gateway.pki.edge_ca import (
    SERVER_CERT_MAX_DAYS,
    ensure_quickstart_edge_ca,
    ensure_server_cert,
    validate_provided_edge_ca,
)

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)
E = TypeVar("E", bound=x509.ExtensionType)
SERVER_AUTH, CLIENT_AUTH = ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH

# The seed's chain: root -> intermediate -> Edge CA -> server cert; devices below the intermediate.
ROOT = CA.create_root("Root", now=NOW - 10 * DAY)
INTER = ROOT.create_child_ca("Intermediate", path_length=1, now=NOW - 10 * DAY)
EDGE = INTER.create_child_ca("Edge CA", path_length=0, now=NOW - 10 * DAY)
SERVER = EDGE.issue_server_cert("edgegateway.local", "10.1.2.3", now=NOW - DAY)
DEVICE = INTER.issue_device_cert("TempSensor", now=NOW - DAY)
IDENTITY = INTER.issue_identity_cert("edge-gw-1", now=NOW - DAY)
SELF_SIGNED = self_signed_device_cert("sensor-ss", now=NOW - DAY)
OTHER_ROOT = CA.create_root("Some Other Root", now=NOW - 10 * DAY)

# Wrong certificates, made on purpose.
NOT_A_CA = INTER.create_child_ca("Not A CA", ca_flag=False, now=NOW - DAY)
BELOW_PATHLEN_0 = EDGE.create_child_ca("Below pathlen 0", now=NOW - DAY)
EXPIRED_INTER = ROOT.create_child_ca("Expired Intermediate", path_length=1, not_before=NOW - 10 * DAY,
                                     not_after=NOW - DAY)
FUTURE_INTER = ROOT.create_child_ca("Future Intermediate", path_length=1, not_before=NOW + DAY,
                                    not_after=NOW + 100 * DAY)


def ext(cert: x509.Certificate, kind: type[E]) -> x509.Extension[E]:
    return cert.extensions.get_extension_for_class(kind)


def has_ext(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> bool:
    try:
        cert.extensions.get_extension_for_class(kind)
    except x509.ExtensionNotFound:
        return False
    return True


# ---- extensions -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ca", "issuer", "path_length"),
    [(ROOT, None, None), (INTER, ROOT, 1), (EDGE, INTER, 0)],
    ids=["root", "intermediate", "edge-ca"],
)
def test_ca_extensions(ca: CA, issuer: CA | None, path_length: int | None) -> None:
    bc = ext(ca.cert, x509.BasicConstraints)
    assert bc.critical
    assert bc.value.ca is True
    assert bc.value.path_length == path_length
    ku = ext(ca.cert, x509.KeyUsage)
    assert ku.critical
    assert ku.value.key_cert_sign
    assert ku.value.crl_sign
    ski = ext(ca.cert, x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(ca.private_key.public_key())
    if issuer is None:
        assert ca.cert.issuer == ca.cert.subject
        assert not has_ext(ca.cert, x509.ExtendedKeyUsage)
    else:
        aki = ext(ca.cert, x509.AuthorityKeyIdentifier).value
        assert aki.key_identifier == ext(issuer.cert, x509.SubjectKeyIdentifier).value.digest
        assert ca.cert.issuer == issuer.cert.subject


@pytest.mark.parametrize(
    ("leaf", "issuer", "eku", "dns", "ips"),
    [
        (SERVER, EDGE, [SERVER_AUTH], ["edgegateway.local"], ["10.1.2.3"]),
        (DEVICE, INTER, [CLIENT_AUTH], None, None),
        (IDENTITY, INTER, [CLIENT_AUTH], None, None),
        (SELF_SIGNED, None, [CLIENT_AUTH], None, None),
    ],
    ids=["server", "device", "identity", "self-signed-device"],
)
def test_leaf_extensions(leaf: IssuedCert, issuer: CA | None, eku: list[x509.ObjectIdentifier],
                         dns: list[str] | None, ips: list[str] | None) -> None:
    bc = ext(leaf.cert, x509.BasicConstraints)
    assert bc.critical
    assert bc.value.ca is False
    ku = ext(leaf.cert, x509.KeyUsage)
    assert ku.critical
    assert ku.value.digital_signature
    assert not ku.value.key_cert_sign
    assert not ku.value.key_encipherment  # ECDSA keys do not encipher
    assert list(ext(leaf.cert, x509.ExtendedKeyUsage).value) == eku
    assert ext(leaf.cert, x509.SubjectKeyIdentifier).value == x509.SubjectKeyIdentifier.from_public_key(
        leaf.private_key.public_key())
    if issuer is None:
        assert not has_ext(leaf.cert, x509.AuthorityKeyIdentifier)
    else:
        aki = ext(leaf.cert, x509.AuthorityKeyIdentifier).value
        assert aki.key_identifier == ext(issuer.cert, x509.SubjectKeyIdentifier).value.digest
    if dns is None:
        assert not has_ext(leaf.cert, x509.SubjectAlternativeName)  # devices are named by their CN
    else:
        san = ext(leaf.cert, x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.DNSName) == dns
        assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ips


def test_rsa_server_cert_may_encipher_and_ecdsa_is_the_default() -> None:
    rsa_server = EDGE.issue_server_cert("rsa.local", key_type=KeyType.RSA_2048, now=NOW)
    assert rsa_server.cert.public_key().key_size == 2048  # type: ignore[union-attr]
    assert ext(rsa_server.cert, x509.KeyUsage).value.key_encipherment
    assert SERVER.cert.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]


def test_fullchain_is_leaf_then_issuers_without_root() -> None:
    assert SERVER.fullchain_pem().bytes == cert_pem(SERVER.cert, EDGE.cert, INTER.cert)
    assert SERVER.fullchain_pem(include_root=True).bytes == cert_pem(SERVER.cert, EDGE.cert, INTER.cert, ROOT.cert)
    assert DEVICE.fullchain_pem().bytes == cert_pem(DEVICE.cert, INTER.cert)


# ---- chain verdicts ---------------------------------------------------------------------------------


def server_case(leaf: IssuedCert, intermediates: list[CA], roots: list[CA], at: datetime,
                hostname: str) -> str:
    verdict = verify_chain(leaf.cert, [c.cert for c in intermediates], [r.cert for r in roots], now=at,
                           purpose="server", hostname=hostname)
    assert verdict.ok == (verdict.reason == "ok"), verdict
    return verdict.reason


@pytest.mark.parametrize(
    ("hostname", "at", "intermediates", "roots", "expected"),
    [
        ("edgegateway.local", NOW, [EDGE, INTER], [ROOT], "ok"),
        ("10.1.2.3", NOW, [EDGE, INTER], [ROOT], "ok"),
        ("other.local", NOW, [EDGE, INTER], [ROOT], "hostname_mismatch"),
        ("edgegateway", NOW, [EDGE, INTER], [ROOT], "hostname_mismatch"),  # short name vs FQDN
        ("edgegateway.local", NOW, [EDGE], [ROOT], "chain_incomplete"),
        ("edgegateway.local", NOW, [EDGE, INTER], [OTHER_ROOT], "chain_incomplete"),
        ("edgegateway.local", NOW + 60 * DAY, [EDGE, INTER], [ROOT], "expired"),
        ("edgegateway.local", NOW - 5 * DAY, [EDGE, INTER], [ROOT], "not_yet_valid"),
    ],
    ids=["good", "good-ip", "wrong-hostname", "short-name", "missing-intermediate", "wrong-root", "expired",
         "not-yet-valid"],
)
def test_server_chain_verdicts(hostname: str, at: datetime, intermediates: list[CA], roots: list[CA],
                               expected: str) -> None:
    assert server_case(SERVER, intermediates, roots, at, hostname) == expected


def _device_below(issuer: CA, **kwargs: object) -> IssuedCert:
    return issuer.issue_device_cert("dev", not_before=NOW - DAY, not_after=NOW + DAY, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("leaf", "intermediates", "expected"),
    [
        (DEVICE, [INTER], "ok"),
        (_device_below(NOT_A_CA), [NOT_A_CA, INTER], "issuer_not_ca"),
        (_device_below(BELOW_PATHLEN_0), [BELOW_PATHLEN_0, EDGE, INTER], "path_length_exceeded"),
        (_device_below(INTER, eku=("serverAuth",)), [INTER], "eku_not_client_auth"),
        (_device_below(EXPIRED_INTER), [EXPIRED_INTER], "expired"),
        (_device_below(FUTURE_INTER), [FUTURE_INTER], "not_yet_valid"),
        (_device_below(INTER), [], "chain_incomplete"),
    ],
    ids=["good", "issuer-ca-false", "pathlen-violation", "eku-serverauth-only", "expired-intermediate",
         "intermediate-not-yet-valid", "intermediate-not-sent"],
)
def test_client_chain_verdicts(leaf: IssuedCert, intermediates: list[CA], expected: str) -> None:
    verdict = verify_chain(leaf.cert, [c.cert for c in intermediates], [ROOT.cert], now=NOW, purpose="client")
    assert verdict.reason == expected, verdict.detail
    assert verdict.ok == (expected == "ok")
    if verdict.ok:
        assert verdict.chain == (leaf.cert, *(c.cert for c in intermediates), ROOT.cert)


def test_server_cert_is_not_a_client_cert_and_back() -> None:
    as_client = verify_chain(SERVER.cert, [EDGE.cert, INTER.cert], [ROOT.cert], now=NOW, purpose="client")
    assert as_client.reason == "eku_not_client_auth"
    as_server = verify_chain(DEVICE.cert, [INTER.cert], [ROOT.cert], now=NOW, purpose="server", hostname="TempSensor")
    assert not as_server.ok


def test_no_roots_is_a_verdict_not_an_exception() -> None:
    assert verify_chain(DEVICE.cert, [INTER.cert], [], now=NOW, purpose="client").reason == "no_trust_anchor"


# ---- openssl as the outside witness ---------------------------------------------------------------


def openssl_verify(tmp_path: Path, leaf: x509.Certificate, untrusted: list[x509.Certificate], root: x509.Certificate,
                   *extra: str) -> subprocess.CompletedProcess[str]:
    root_path = tmp_path / "root.pem"
    root_path.write_bytes(cert_pem(root))
    leaf_path = tmp_path / "leaf.pem"
    leaf_path.write_bytes(cert_pem(leaf))
    args = ["openssl", "verify", "-attime", str(int(NOW.timestamp())), "-CAfile", str(root_path), *extra]
    if untrusted:
        chain_path = tmp_path / "untrusted.pem"
        chain_path.write_bytes(cert_pem(*untrusted))
        args += ["-untrusted", str(chain_path)]
    return subprocess.run([*args, str(leaf_path)], capture_output=True, text=True, timeout=30)


def test_openssl_agrees_on_the_good_server_chain(tmp_path: Path) -> None:
    done = openssl_verify(tmp_path, SERVER.cert, [EDGE.cert, INTER.cert], ROOT.cert, "-purpose", "sslserver",
                          "-verify_hostname", "edgegateway.local")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().endswith(": OK")
    assert server_case(SERVER, [EDGE, INTER], [ROOT], NOW, "edgegateway.local") == "ok"


@pytest.mark.parametrize(
    ("leaf", "untrusted", "hostname", "openssl_error"),
    [
        (SERVER, [EDGE, INTER], "other.local", "hostname mismatch"),
        (SERVER, [EDGE], "edgegateway.local", "unable to get local issuer certificate"),
        (_device_below(BELOW_PATHLEN_0), [BELOW_PATHLEN_0, EDGE, INTER], None, "path length constraint exceeded"),
        (_device_below(INTER, eku=("serverAuth",)), [INTER], None, "certificate purpose"),
    ],
    ids=["wrong-hostname", "missing-intermediate", "pathlen", "eku"],
)
def test_openssl_rejects_what_verify_chain_rejects(tmp_path: Path, leaf: IssuedCert, untrusted: list[CA],
                                                   hostname: str | None, openssl_error: str) -> None:
    extra = ["-purpose", "sslserver", "-verify_hostname", hostname] if hostname else ["-purpose", "sslclient"]
    done = openssl_verify(tmp_path, leaf.cert, [c.cert for c in untrusted], ROOT.cert, *extra)
    assert done.returncode != 0
    assert openssl_error in (done.stdout + done.stderr).lower()
    verdict = verify_chain(leaf.cert, [c.cert for c in untrusted], [ROOT.cert], now=NOW,
                           purpose="server" if hostname else "client", hostname=hostname)
    assert not verdict.ok


# ---- key files ------------------------------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_key_files_are_0600_even_when_replacing_a_loose_file(tmp_path: Path) -> None:
    assert mode(SERVER.private_key_pem.write_to_path(tmp_path / "k.pem", private=True)) == 0o600
    loose = tmp_path / "loose.key"
    loose.write_bytes(b"old")
    loose.chmod(0o644)
    write_private_key(loose, DEVICE.private_key_pem.bytes)
    assert mode(loose) == 0o600
    assert loose.read_bytes() == DEVICE.private_key_pem.bytes
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left behind
    assert mode(SERVER.cert_pem.write_to_path(tmp_path / "c.pem")) == 0o644


def test_gateway_keys_in_the_state_dir_are_0600(tmp_path: Path) -> None:
    material = ensure_quickstart_edge_ca(tmp_path, now=NOW)
    server = ensure_server_cert(tmp_path, material.ca, "edgegateway.local", now=NOW)
    for key in (tmp_path / "pki" / "quickstart-root.key", material.key_path, server.key_path):
        assert mode(key) == 0o600, key


# ---- quickstart Edge CA --------------------------------------------------------------------------


def test_quickstart_reuses_then_renews_the_edge_ca_under_the_same_root(tmp_path: Path) -> None:
    first = ensure_quickstart_edge_ca(tmp_path, expiry_days=90, threshold=0.8, now=NOW)
    root_bytes = first.trust_bundle_path.read_bytes()
    assert first.quickstart
    assert ext(first.ca.cert, x509.BasicConstraints).value.path_length == 0
    again = ensure_quickstart_edge_ca(tmp_path, expiry_days=90, threshold=0.8, now=NOW + 71 * DAY)
    assert again.ca.cert == first.ca.cert  # restart before the threshold: same Edge CA
    renewed = ensure_quickstart_edge_ca(tmp_path, expiry_days=90, threshold=0.8, now=NOW + 73 * DAY)
    assert renewed.ca.cert != first.ca.cert
    assert renewed.ca.root == first.ca.root  # children never re-trust
    assert first.trust_bundle_path.read_bytes() == root_bytes
    server = renewed.ca.issue_server_cert("edgegateway.local", now=NOW + 73 * DAY)
    verdict = verify_chain(server.cert, [renewed.ca.cert], [first.ca.root], now=NOW + 74 * DAY, purpose="server",
                           hostname="edgegateway.local")
    assert verdict.ok, verdict.detail


def test_quickstart_replaces_an_edge_ca_from_another_root(tmp_path: Path) -> None:
    first = ensure_quickstart_edge_ca(tmp_path, now=NOW)
    stranger = OTHER_ROOT.create_child_ca("Stranger", now=NOW)
    write_private_key(first.key_path, stranger.private_key_pem.bytes)
    first.cert_path.write_bytes(cert_pem(stranger.cert))
    fixed = ensure_quickstart_edge_ca(tmp_path, now=NOW + DAY)
    assert fixed.ca.cert.issuer == first.ca.root.subject


# ---- server certificate ---------------------------------------------------------------------------


def test_server_cert_lasts_at_most_30_days(tmp_path: Path) -> None:
    material = ensure_server_cert(tmp_path, EDGE, "edgegateway.local", now=NOW, days=365)
    lifetime = material.cert.not_valid_after_utc - NOW
    assert lifetime <= timedelta(days=SERVER_CERT_MAX_DAYS) == timedelta(days=30)
    assert lifetime > timedelta(days=29)


def test_server_cert_never_outlives_the_edge_ca(tmp_path: Path) -> None:
    short_edge = INTER.create_child_ca("Short Edge CA", now=NOW - DAY, days=10)
    material = ensure_server_cert(tmp_path, short_edge, "edgegateway.local", now=NOW)
    assert material.cert.not_valid_after_utc == short_edge.cert.not_valid_after_utc
    long_asked = EDGE.issue_server_cert("x.local", days=10_000, now=NOW)
    assert long_asked.cert.not_valid_after_utc == EDGE.cert.not_valid_after_utc


def test_server_cert_reused_while_right_reissued_on_name_change_or_renewal(tmp_path: Path) -> None:
    first = ensure_server_cert(tmp_path, EDGE, "edgegateway.local", ["10.1.2.3"], now=NOW)
    assert first.issued
    again = ensure_server_cert(tmp_path, EDGE, "edgegateway.local", ["10.1.2.3"], now=NOW + DAY)
    assert not again.issued
    assert again.cert == first.cert
    renamed = ensure_server_cert(tmp_path, EDGE, "gateway2.local", ["10.1.2.3"], now=NOW + DAY)
    assert renamed.issued
    assert renamed.cert.subject.rfc4514_string() == "CN=gateway2.local"
    fewer_names = ensure_server_cert(tmp_path, EDGE, "gateway2.local", now=NOW + DAY)
    assert fewer_names.issued
    due = ensure_server_cert(tmp_path, EDGE, "gateway2.local", now=NOW + 25 * DAY, threshold=0.8)
    assert due.issued
    on_disk = x509.load_pem_x509_certificates(due.chain_path.read_bytes())
    assert on_disk == [due.cert, EDGE.cert, INTER.cert]  # the wire carries leaf + Edge CA + intermediates


def test_server_cert_reissued_when_the_edge_ca_changes(tmp_path: Path) -> None:
    ensure_server_cert(tmp_path, EDGE, "edgegateway.local", now=NOW)
    new_edge = INTER.create_child_ca("New Edge CA", now=NOW)
    moved = ensure_server_cert(tmp_path, new_edge, "edgegateway.local", now=NOW + DAY)
    assert moved.issued
    assert moved.cert.issuer == new_edge.cert.subject


# ---- provided Edge CA -----------------------------------------------------------------------------


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
    with pytest.raises(PKIError, match="check the clock"):
        validate_provided_edge_ca(chain, key, root_path, now=NOW - 30 * DAY)
    leaf = SERVER.cert_pem.write_to_path(tmp_path / "leaf.pem")
    leaf_key = SERVER.private_key_pem.write_to_path(tmp_path / "leaf.key", private=True)
    with pytest.raises(PKIError, match="not a CA"):
        validate_provided_edge_ca(leaf, leaf_key, root_path, now=NOW)

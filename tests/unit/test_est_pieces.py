"""The pure EST pieces: PKCS#10 out, PKCS#7 in, the check of what was issued, the EST server's policy
and the hub's acceptance of EST identities; and the pair store's never-lose-a-pair rule."""

from __future__ import annotations

import base64
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7

from gateway.errors import EstReplyInvalid
from gateway.est.csr import BASE64_LINE, base64_body, build_csr
from gateway.est.issued import chain_file_certs, issued_problem
from gateway.est.pairstore import PairStore
from gateway.est.pkcs7 import parse_certs_only
from gateway.pki import CA, cert_pem
from gateway.pki.keys import KeyType, generate_key
from hub_mock.est_auth import authenticate_est_gateway
from hub_mock.est_ca import EstCA
from hub_mock.est_policy import ClientKind, EstClient, Profile, decide_enrollment
from hub_mock.identity import GatewayAuthReason
from hub_mock.registry import GatewayRegistration

NOW = datetime(2026, 6, 1, tzinfo=UTC)
ROOT = CA.create_root("test EST root", now=NOW - timedelta(days=1), path_length=2)
EST_CA = ROOT.create_child_ca("test EST CA", path_length=1, now=NOW - timedelta(days=1))
IDENTITY = Profile("identity", False, timedelta(days=30))
EDGE = Profile("edge-ca", True, timedelta(days=90))


def csr_of(key: object, cn: str, *, ca: bool = False) -> x509.CertificateSigningRequest:
    return x509.load_der_x509_csr(build_csr(key, cn, ca=ca))  # type: ignore[arg-type]


def bootstrap(name: str = "gw1") -> EstClient:
    return EstClient(ClientKind.BOOTSTRAP, name, x509.Name.from_rfc4514_string(f"CN={name}"))


def identity(name: str = "gw1") -> EstClient:
    return EstClient(ClientKind.IDENTITY, name, x509.Name.from_rfc4514_string(f"CN={name}"))


# ---- PKCS#10 and PKCS#7 ---------------------------------------------------------------------------


def test_csr_asks_for_what_the_role_needs() -> None:
    key = generate_key()
    ident, edge = csr_of(key, "gw1"), csr_of(key, "gw1 Edge CA", ca=True)
    assert ident.is_signature_valid
    assert not ident.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    bc = edge.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert (bc.ca, bc.path_length) == (True, 0)
    body = base64_body(build_csr(key, "gw1", ca=False))
    assert all(len(line) <= BASE64_LINE for line in body.splitlines())


def _bag(*certs: x509.Certificate) -> bytes:
    return pkcs7.serialize_certificates(list(certs), Encoding.DER)


@pytest.mark.parametrize("encode", [base64.encodebytes, base64.b64encode, lambda der: der],
                         ids=["base64-lines", "base64-one-line", "der"])
def test_pkcs7_certs_only_parses_in_every_encoding(encode: object) -> None:
    body = encode(_bag(EST_CA.cert, ROOT.cert))  # type: ignore[operator]
    # A SET OF: the order on the wire is DER order, not the order given.
    assert set(parse_certs_only(body, "cacerts")) == {EST_CA.cert, ROOT.cert}


@pytest.mark.parametrize(("body", "reason"), [
    (b"", "reply_empty"),
    (base64.encodebytes(b"not PKCS#7 at all"), "reply_not_pkcs7"),
    (b"\x30\x03\x02\x01\x01", "reply_not_pkcs7"),
    (b"A" * (2 * 1024 * 1024), "reply_too_large"),
])
def test_pkcs7_garbage_gets_a_reason(body: bytes, reason: str) -> None:
    with pytest.raises(EstReplyInvalid) as caught:
        parse_certs_only(body, "simpleenroll")
    assert caught.value.reason == reason


# ---- what was issued ------------------------------------------------------------------------------


def test_issued_problem_table() -> None:
    est = EstCA(EST_CA)
    key, other = generate_key(), generate_key()
    good = est.issue(csr_of(key, "gw1"), IDENTITY, bootstrap(), "simpleenroll", NOW)
    ca = est.issue(csr_of(key, "gw1 Edge CA", ca=True), EDGE, identity(), "simpleenroll", NOW)
    wrong_key = est.issue(csr_of(other, "gw1"), IDENTITY, bootstrap(), "simpleenroll", NOW)
    assert issued_problem([good, EST_CA.cert], key, "gw1", ca=False, now=NOW) is None
    assert issued_problem([EST_CA.cert, ca], key, "gw1 Edge CA", ca=True, now=NOW) is None
    cases = [
        ([wrong_key], "gw1", False, NOW, "key_mismatch"),
        ([good], "gw2", False, NOW, "wrong_subject"),
        ([good], "gw1", True, NOW, "wrong_kind"),
        ([good], "gw1", False, NOW + timedelta(days=31), "already_expired"),
    ]
    for certs, cn, is_ca, now, reason in cases:
        problem = issued_problem(certs, key, cn, ca=is_ca, now=now)
        assert problem is not None
        assert problem.reason == reason


def test_chain_file_is_leaf_then_intermediates_without_the_root() -> None:
    est = EstCA(EST_CA)
    key = generate_key()
    leaf = est.issue(csr_of(key, "gw1"), IDENTITY, bootstrap(), "simpleenroll", NOW)
    assert chain_file_certs(leaf, [leaf], [EST_CA.cert, ROOT.cert]) == (leaf, EST_CA.cert)


def test_issued_lifetime_is_clamped_to_the_est_ca_and_backdated_a_little() -> None:
    short = ROOT.create_child_ca("short EST CA", path_length=1, now=NOW, days=10)
    cert = EstCA(short).issue(csr_of(generate_key(), "gw1"), IDENTITY, bootstrap(), "simpleenroll", NOW)
    assert cert.not_valid_after_utc == short.cert.not_valid_after_utc
    drill = Profile("identity", False, timedelta(seconds=20))
    cert = EstCA(EST_CA).issue(csr_of(generate_key(), "gw1"), drill, bootstrap(), "simpleenroll", NOW)
    assert NOW - cert.not_valid_before_utc == timedelta(seconds=2)


# ---- the EST server's policy ----------------------------------------------------------------------

POLICY = [
    ("identity for the bootstrap's name", "gw1", False, bootstrap(), IDENTITY, False, "ok"),
    ("identity for another name", "gw2", False, bootstrap(), IDENTITY, False, "policy_violation"),
    ("a CA from the identity profile", "gw1", True, bootstrap(), IDENTITY, False, "policy_violation"),
    ("an Edge CA named for the gateway", "gw1 Edge CA", True, identity(), EDGE, False, "ok"),
    ("an Edge CA named for another", "gw2 Edge CA", True, identity(), EDGE, False, "policy_violation"),
    ("reenroll with a bootstrap cert", "gw1", False, bootstrap(), IDENTITY, True, "reenroll_needs_identity"),
    ("reenroll with the identity", "gw1", False, identity(), IDENTITY, True, "ok"),
    ("reenroll another subject", "gw1", False, identity("gw1x"), IDENTITY, True, "reenroll_subject_mismatch"),
    ("Basic user's own name", "est-user", False, EstClient(ClientKind.BASIC, "est-user", None), IDENTITY, False,
     "ok"),
]


@pytest.mark.parametrize(("cn", "ca", "client", "profile", "reenroll", "reason"), [row[1:] for row in POLICY],
                         ids=[row[0] for row in POLICY])
def test_enrollment_policy(cn: str, ca: bool, client: EstClient, profile: Profile, reenroll: bool,
                           reason: str) -> None:
    decision = decide_enrollment(csr_of(generate_key(), cn, ca=ca), client, profile, reenroll=reenroll)
    assert (decision.ok, decision.reason) == (reason == "ok", reason)
    assert decision.message


def test_weak_keys_are_refused() -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    decision = decide_enrollment(csr_of(weak, "gw1"), bootstrap(), IDENTITY, reenroll=False)
    assert decision.reason == "csr_weak_key"
    assert decide_enrollment(csr_of(generate_key(KeyType.RSA_2048), "gw1"), bootstrap(), IDENTITY,
                             reenroll=False).ok


# ---- the hub accepts EST identities ---------------------------------------------------------------


def test_hub_accepts_an_est_identity_of_the_registered_gateway_only() -> None:
    reg = GatewayRegistration("gw1", "00" * 32, None, None)
    est = EstCA(EST_CA)
    ident = est.issue(csr_of(generate_key(), "gw1"), IDENTITY, bootstrap(), "simpleenroll", NOW)
    ok = authenticate_est_gateway("gw1", reg, ident, EST_CA.cert, NOW)
    assert ok is not None
    assert ok.ok
    assert authenticate_est_gateway("gw2", GatewayRegistration("gw2", "00" * 32, None, None), ident,
                                    EST_CA.cert, NOW) is None  # CN is another gateway
    assert authenticate_est_gateway("gw1", None, ident, EST_CA.cert, NOW) is None  # not registered
    edge = est.issue(csr_of(generate_key(), "gw1", ca=False), EDGE, identity(), "simpleenroll", NOW)
    assert authenticate_est_gateway("gw1", reg, edge, EST_CA.cert, NOW) is None  # no clientAuth EKU
    forged = CA.create_root("test EST CA").issue_identity_cert("gw1", now=NOW)  # same issuer name
    assert authenticate_est_gateway("gw1", reg, forged.cert, EST_CA.cert, NOW) is None
    expired = authenticate_est_gateway("gw1", reg, ident, EST_CA.cert, NOW + timedelta(days=31))
    assert expired is not None
    assert expired.reason is GatewayAuthReason.IDENTITY_EXPIRED


# ---- the pair store -------------------------------------------------------------------------------


def _issue(cn: str = "gw1") -> tuple[tuple[x509.Certificate, ...], object]:
    key = generate_key()
    cert = EstCA(EST_CA).issue(csr_of(key, cn), IDENTITY, bootstrap(), "simpleenroll", NOW)
    return (cert, EST_CA.cert), key


def test_pair_store_keeps_the_previous_pair_until_confirmed(tmp_path: Path) -> None:
    store = PairStore(tmp_path / "id.pem", tmp_path / "id.key")
    assert store.load() is None
    first_chain, first_key = _issue()
    store.install(first_chain, first_key)  # type: ignore[arg-type]
    assert stat.S_IMODE((tmp_path / "id.key").stat().st_mode) == 0o600
    assert not store.pending
    second_chain, second_key = _issue()
    store.install(second_chain, second_key)  # type: ignore[arg-type]
    assert store.pending
    assert stat.S_IMODE((tmp_path / "id.key.prev").stat().st_mode) == 0o600
    loaded = store.load()
    assert loaded is not None
    assert loaded.leaf == second_chain[0]
    back = store.rollback()
    assert back is not None
    assert back.leaf == first_chain[0]
    assert store.load().leaf == first_chain[0]  # type: ignore[union-attr]
    assert not store.pending
    store.install(second_chain, second_key)  # type: ignore[arg-type]
    store.confirm()
    assert not store.pending
    assert not (tmp_path / "id.pem.prev").exists()


def test_a_crash_between_key_and_cert_brings_the_previous_pair_back(tmp_path: Path) -> None:
    store = PairStore(tmp_path / "id.pem", tmp_path / "id.key")
    first_chain, first_key = _issue()
    store.install(first_chain, first_key)  # type: ignore[arg-type]
    second_chain, second_key = _issue()
    store.install(second_chain, second_key)  # type: ignore[arg-type]
    # As if the process died after writing the new key but before the new cert.
    (tmp_path / "id.pem").write_bytes(cert_pem(EST_CA.cert))  # a cert that does not match the key
    loaded = store.load()
    assert loaded is not None
    assert loaded.leaf == first_chain[0]
    assert not store.pending

"""authenticate() over the whole certificate matrix, as plain data: no sockets, fixed `now`."""

from __future__ import annotations

from datetime import timedelta

import pytest

from gateway.auth.decision import AuthPolicy, ConnectClaim, authenticate
from gateway.auth.reasons import Reason
from gateway.pki import thumbprint_sha1, thumbprint_sha256
from gateway.records import PeerIdentity
from tests import certmatrix

MATRIX = certmatrix.build()


def peer_for(row: certmatrix.Row) -> PeerIdentity:
    chain = row.client_chain
    if not chain:
        return PeerIdentity(chain=(), sha256=None, sha1=None)
    return PeerIdentity(chain=chain, sha256=thumbprint_sha256(chain[0]), sha1=thumbprint_sha1(chain[0]))


def decide(row: certmatrix.Row, **policy_overrides: object):  # type: ignore[no-untyped-def]
    records = {r.device_id: r for r in row.records}
    policy = AuthPolicy(certmatrix.GATEWAY_ID, MATRIX.anchors, timedelta(minutes=5),
                        **policy_overrides)  # type: ignore[arg-type]
    claim = ConnectClaim(row.client_id, row.username)
    return authenticate(peer_for(row), claim, records.get(row.client_id), policy, certmatrix.NOW)


@pytest.mark.parametrize("row", MATRIX.rows, ids=lambda r: r.name)
def test_matrix_row(row: certmatrix.Row) -> None:
    decision = decide(row)
    assert decision.reason is row.expected, decision.message
    assert decision.ok is (row.expected is Reason.OK)
    assert decision.device_id == row.client_id
    assert decision.message


def test_cn_mismatch_sentence_names_both_and_case() -> None:
    decision = decide(MATRIX.by_name("cn case mismatch"))
    assert decision.message == (
        "certificate CN 'tempsensor' does not match client id 'TempSensor' (CN is case-sensitive)"
    )


def test_not_yet_valid_within_clock_skew_is_accepted() -> None:
    row = MATRIX.by_name("ca signed, leaf not yet valid")  # valid from NOW + 1 day
    records = {r.device_id: r for r in row.records}
    policy = AuthPolicy(certmatrix.GATEWAY_ID, MATRIX.anchors, clock_skew=timedelta(days=2))
    decision = authenticate(peer_for(row), ConnectClaim(row.client_id), records[row.client_id], policy,
                            certmatrix.NOW)
    assert decision.ok, decision.message


def test_stale_cache_refuses_with_server_unavailable() -> None:
    row = MATRIX.by_name("thumbprint primary sha256")
    decision = decide(row, cache_fresh=False)
    assert decision.reason is Reason.CACHE_TOO_OLD
    assert decision.reason.connack_code == 3


def test_thumbprint_in_colon_form_matches() -> None:
    row = MATRIX.by_name("thumbprint primary sha256")
    assert row.cert is not None
    colon = ":".join(row.cert.thumbprint_sha256[i:i + 2] for i in range(0, 64, 2)).upper()
    record = certmatrix.ss_record(row.client_id, colon)
    policy = AuthPolicy(certmatrix.GATEWAY_ID, MATRIX.anchors)
    assert authenticate(peer_for(row), ConnectClaim(row.client_id), record, policy, certmatrix.NOW).ok


def test_malformed_client_id_gets_identifier_rejected() -> None:
    assert decide(MATRIX.by_name("malformed client id")).reason.connack_code == 2


def test_every_reason_has_code_sentence_and_counter() -> None:
    for reason in Reason:
        assert reason.connack_code in (0, 1, 2, 3, 4, 5)
        assert (reason.sentence and reason.sentence[0].islower()) or reason is Reason.OK
        assert reason.value in reason.counter
    assert Reason.OK.connack_code == 0
    assert all(r.connack_code != 0 for r in Reason if r is not Reason.OK)


# What cryptography's verifier says, in its own words: none of it may reach a sentence for people.
LIBRARY_WORDS = ("validation failed", "candidates exhausted", "AlgorithmIdentifier", "PhantomData",
                 "DefinedByMarker", "max depth", "<Certificate", "ObjectIdentifier", "encountered processing",
                 "unaccounted-for", "basicConstraints.cA must be asserted", "{", "}")


@pytest.mark.parametrize("row", MATRIX.rows, ids=lambda r: r.name)
def test_no_library_text_in_any_sentence(row: certmatrix.Row) -> None:
    decision = decide(row)
    for words in LIBRARY_WORDS:
        assert words not in decision.message, (words, decision.message)
    if decision.detail:
        assert decision.detail not in decision.message
    assert decision.message[0].islower() or decision.message[0] == "C", decision.message


def test_chain_failures_keep_the_library_words_for_the_debug_log() -> None:
    decision = decide(MATRIX.by_name("sha-1 signed leaf"))
    assert "Forbidden signature algorithm" in decision.detail
    assert decision.message == ("CN=ca-sha1 is signed with SHA1, which the gateway does not accept; "
                                "re-issue it signed with SHA-256")


@pytest.mark.parametrize(
    ("row", "words"),
    [
        ("ca signed, intermediate missing", "the device sent only its own certificate, and its issuer "
                                            "CN=Device Intermediate CA is not a registered CA"),
        ("unknown ca", "CN=Unknown Root CA above it is not a registered CA"),
        ("unknown ca, its root sent along", "the chain ends at the root CN=Unknown Root CA, which is not a "
                                            "registered CA"),
        ("same-name ca, other key", "the registered CA CN=Device Root CA has the right name but is not the key"),
        ("unknown critical extension", "CN=ca-critical carries the critical extension 1.3.6.1.4.1.55555.1.1"),
        ("leaf signed by a thumbprint device's cert", "CN=ca-bydevice is signed by CN=ss-primary, which is not a "
                                                      "CA certificate"),
        ("expired intermediate", "the chain certificate CN=Expired Intermediate expired on"),
        ("issuer is not a ca", "CN=ca-badissuer is signed by CN=Leaf Posing As CA, which is not a CA"),
    ],
)
def test_chain_sentences_name_the_certificate(row: str, words: str) -> None:
    assert words in decide(MATRIX.by_name(row)).message


def test_the_anchor_a_chain_reached_is_recorded() -> None:
    from gateway.pki import thumbprint_sha256 as sha256

    reached = decide(MATRIX.by_name("registered intermediate, root not registered")).anchor
    assert reached == sha256(MATRIX.anchors.roots[1])
    assert decide(MATRIX.by_name("ca signed, intermediate sent")).anchor == sha256(MATRIX.root.cert)
    assert decide(MATRIX.by_name("thumbprint primary sha256")).anchor is None

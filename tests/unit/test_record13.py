"""The TLS 1.3 record layer and the hand-over's pure parts, in memory.

A pair of `Records13` (the gateway's side and a peer built from the same secrets the other way round)
checks the protocol rules; that the keys and framing agree with OpenSSL is shown in test_tls_session.py
(every suite, both ways) and tests/integration/test_tls_keyupdate.py (a real `openssl s_client` KeyUpdate)."""

from __future__ import annotations

import os

import pytest

from gateway.errors import TLSFailed
from gateway.tls import record13
from gateway.tls.handoff import CLIENT_APPLICATION, LABELS, parse_key_log_line, take_over
from gateway.tls.record13 import (
    ALERT,
    APPLICATION_DATA,
    HANDSHAKE,
    KEY_UPDATE,
    MAX_PLAINTEXT,
    SUITES,
    Records13,
    TrafficKeys,
    seal,
)


def pair(suite_name: str = "TLS_AES_256_GCM_SHA384") -> tuple[Records13, Records13]:
    """(gateway side, device side) sharing fresh secrets."""
    suite = SUITES[suite_name]
    c, s = os.urandom(suite.hash.digest_size), os.urandom(suite.hash.digest_size)
    return (Records13(TrafficKeys(suite, c), TrafficKeys(suite, s)),
            Records13(TrafficKeys(suite, s), TrafficKeys(suite, c)))


def send(frm: Records13, to: Records13) -> bytes:
    to.receive(frm.outgoing())
    return to.read()


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_data_both_ways_whole_and_byte_by_byte(suite: str) -> None:
    gw, dev = pair(suite)
    dev.write(b"publish")
    assert send(dev, gw) == b"publish"
    gw.write(b"puback")
    assert send(gw, dev) == b"puback"
    dev.write(b"x" * 40_000)
    wire = dev.outgoing()
    got = b""
    for i in range(len(wire)):
        gw.receive(wire[i:i + 1])
        got += gw.read()
    assert got == b"x" * 40_000


def test_a_write_is_split_into_records_of_at_most_16_kib() -> None:
    gw, dev = pair()
    gw.write(b"y" * (2 * MAX_PLAINTEXT + 1))
    wire = gw.outgoing()
    records, used = record13.split_records(wire)
    assert used == len(wire)
    assert [len(body) - 17 for _, body in records] == [MAX_PLAINTEXT, MAX_PLAINTEXT, 1]
    dev.receive(wire)
    assert dev.read() == b"y" * (2 * MAX_PLAINTEXT + 1)


@pytest.mark.parametrize("requested", [False, True])
def test_a_key_update_from_the_device(requested: bool) -> None:
    gw, dev = pair()
    dev._out.append(seal(dev._write, HANDSHAKE, bytes((KEY_UPDATE, 0, 0, 1, int(requested)))))
    dev._write = dev._write.updated()
    dev.write(b"after")
    assert send(dev, gw) == b"after"
    answer = gw.outgoing()
    assert bool(answer) == requested  # our own KeyUpdate, only when asked
    dev.receive(answer)
    assert dev.read() == b""
    gw.write(b"puback")
    assert send(gw, dev) == b"puback"  # the device followed our update (or there was none)


def test_our_keys_are_updated_before_the_aead_limit() -> None:
    gw, dev = pair()
    gw._write.seq = record13.KEY_UPDATE_AFTER
    dev._read.seq = record13.KEY_UPDATE_AFTER
    gw.write(b"one")
    gw.write(b"two")
    assert gw._write.seq == 2  # a new generation of keys
    assert send(gw, dev) == b"onetwo"


def test_the_sequence_number_never_wraps() -> None:
    gw, _ = pair()
    gw._write.seq = record13.MAX_SEQ
    with pytest.raises(TLSFailed, match="exhausted"):
        gw._write.next_nonce()


def test_close_notify_both_ways() -> None:
    gw, dev = pair()
    dev.write(b"bye")
    dev.close()
    dev.close()  # once
    assert send(dev, gw) == b"bye"
    assert gw.closed
    with pytest.raises(TLSFailed):
        dev.write(b"more")


def forged(dev: Records13, content_type: int, content: bytes) -> bytes:
    return seal(dev._write, content_type, content)


@pytest.mark.parametrize(("content_type", "content", "why"), [
    (HANDSHAKE, bytes((KEY_UPDATE, 0, 0, 1, 7)), "malformed TLS KeyUpdate"),
    (HANDSHAKE, bytes((KEY_UPDATE, 0, 0, 2, 0, 0)), "malformed TLS KeyUpdate"),
    (HANDSHAKE, bytes((4, 0, 0, 1, 0)), "handshake message of type 4"),  # a NewSessionTicket from a client
    (HANDSHAKE, bytes((KEY_UPDATE, 0)), "split across records"),
    (HANDSHAKE, bytes((KEY_UPDATE, 0, 0, 1, 0)) * 2, "does not end its record"),  # §5.1
    (ALERT, bytes((2,)), "malformed TLS alert"),
    (ALERT, bytes((2, 40)), "alert 40"),  # handshake_failure from the peer
    (99, b"what", "content type 99"),
])
def test_what_tls13_forbids_after_the_handshake_is_refused(content_type: int, content: bytes, why: str) -> None:
    gw, dev = pair()
    gw.receive(forged(dev, content_type, content))
    with pytest.raises(TLSFailed, match=why):
        gw.read()
    assert gw.closed


def test_an_unprotected_record_is_refused_with_an_alert() -> None:
    gw, dev = pair()
    gw.receive(bytes((HANDSHAKE, 3, 3, 0, 4)) + b"\x01\x00\x00\x00")
    with pytest.raises(TLSFailed, match="unprotected"):
        gw.read()
    dev.receive(gw.outgoing())
    with pytest.raises(TLSFailed, match="alert 10"):  # unexpected_message, told to the peer
        dev.read()


def test_an_oversized_record_is_refused_before_it_is_buffered() -> None:
    gw, _ = pair()
    gw.receive(bytes((APPLICATION_DATA, 3, 3, 0x48, 0x01)))
    with pytest.raises(TLSFailed, match="at most"):
        gw.read()


def test_padding_and_an_all_zero_record() -> None:
    gw, dev = pair()
    gw.receive(_padded(dev, b"padded", 20))
    assert gw.read() == b"padded"
    gw.receive(_padded(dev, b"", 0, content_type=0))
    with pytest.raises(TLSFailed, match="no content type"):
        gw.read()


def _padded(dev: Records13, content: bytes, zeros: int, content_type: int = APPLICATION_DATA) -> bytes:
    keys = dev._write
    inner = content + bytes((content_type,)) + bytes(zeros)
    length = len(inner) + 16
    header = bytes((APPLICATION_DATA, 3, 3, length >> 8, length & 0xFF))
    return header + keys.aead.encrypt(keys.next_nonce(), inner, header)


@pytest.mark.parametrize(("line", "expected"), [
    (b"CLIENT_TRAFFIC_SECRET_0 00ff 0a0b", (CLIENT_APPLICATION, b"\x0a\x0b")),
    (b"EXPORTER_SECRET 00ff 0a0b", None),  # not one we use
    (b"CLIENT_RANDOM 00ff 0a0b", None),  # TLS 1.2's master secret
    (b"CLIENT_TRAFFIC_SECRET_0 00ff zz", None),
    (b"CLIENT_TRAFFIC_SECRET_0 00ff", None),
    (b"", None),
])
def test_key_log_lines(line: bytes, expected: tuple[str, bytes] | None) -> None:
    assert parse_key_log_line(line) == expected


def test_no_hand_over_without_every_secret_or_for_an_unknown_suite() -> None:
    secrets = {label: os.urandom(48) for label in LABELS}
    assert take_over("TLS_AES_128_CCM_SHA256", secrets, b"", b"", b"") is None
    del secrets[CLIENT_APPLICATION]
    assert take_over("TLS_AES_256_GCM_SHA384", secrets, b"", b"", b"") is None


def test_no_hand_over_when_the_records_do_not_open() -> None:
    """Secrets that do not match the bytes (a wrong count, a wrong line): OpenSSL keeps the connection."""
    secrets = {label: os.urandom(48) for label in LABELS}
    gw, dev = pair()
    dev.write(b"finished?")
    gw.write(b"finished?")
    assert take_over("TLS_AES_256_GCM_SHA384", secrets, dev.outgoing(), gw.outgoing(), b"") is None


@pytest.mark.parametrize("suite", sorted(SUITES))
@pytest.mark.parametrize("length", [12, 16, 32, 48, 64, 100])
def test_the_one_block_hkdf_expand_is_hkdf_expand(suite: str, length: int) -> None:
    from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
    s = SUITES[suite]
    secret = os.urandom(s.hash.digest_size)
    info = length.to_bytes(2, "big") + bytes([len(b"tls13 key")]) + b"tls13 key" + b"\x00"
    expected = HKDFExpand(s.hash(), length, info).derive(secret)
    assert record13.hkdf_expand_label(s, secret, b"key", b"", length) == expected

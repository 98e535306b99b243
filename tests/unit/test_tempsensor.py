"""TempSensor's pure parts: the TLS diagnosis, failures in words, backoff, readings, fleet selection."""

from __future__ import annotations

import errno
import io
import json
import socket
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from hypothesis import given
from hypothesis import strategies as st

from devices.backoff import next_backoff
from devices.cli import fleet_exit, fleet_members, main
from devices.diagnose import diagnose, name_matches
from devices.events import Events
from devices.failures import (
    FATAL,
    Reason,
    connack_refusal,
    connection_lost,
    socket_failure,
    tls_failure,
    verification_failure,
)
from devices.readings import first_reading, next_reading
from devices.sensor import Exit
from gateway.pki import CA

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
ROOT = CA.create_root("Gateway Root", now=NOW - timedelta(days=10))
EDGE = ROOT.create_child_ca("Edge CA", now=NOW - timedelta(days=10))
SERVER = EDGE.issue_server_cert("edgegateway.local", "10.0.0.5", now=NOW - timedelta(days=1))
CHAIN = [SERVER.cert, EDGE.cert]
OTHER_ROOT = CA.create_root("Someone Else", now=NOW - timedelta(days=10))
SAME_NAME_ROOT = CA.create_root("Gateway Root", now=NOW - timedelta(days=10))  # regenerated: same name, new key
STALE_EDGE = ROOT.create_child_ca("Edge CA", days=30, now=NOW - timedelta(days=400))
NOT_A_CA = ROOT.create_child_ca("Edge CA", ca_flag=False, now=NOW - timedelta(days=10))
FROM_NOT_A_CA = NOT_A_CA.issue_server_cert("edgegateway.local", now=NOW - timedelta(days=1))
# A root made after the gateway's certificates were (re-keyed under its old key, as a renewed root is).
YOUNG_ROOT = (x509.CertificateBuilder().subject_name(ROOT.cert.subject).issuer_name(ROOT.cert.subject)
              .public_key(ROOT.private_key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(NOW + timedelta(hours=1)).not_valid_after(NOW + timedelta(days=3650))
              .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
              .sign(ROOT.private_key, hashes.SHA256()))  # type: ignore[arg-type]

FINE = "the gateway's certificate and chain are fine"
SENT = "the gateway's chain does not lead to a root in ca-file (gateway sent: CN=edgegateway.local ← CN=Edge CA; "


@pytest.mark.parametrize(
    ("dialled", "chain", "roots", "now", "reason", "message"),
    [
        ("edgegateway.local", CHAIN, [ROOT.cert], NOW, Reason.GATEWAY_TRUSTED, FINE),
        ("10.0.0.5", CHAIN, [ROOT.cert], NOW, Reason.GATEWAY_TRUSTED, FINE),
        ("EdgeGateway.Local", CHAIN, [ROOT.cert], NOW, Reason.GATEWAY_TRUSTED, FINE),
        ("edgegateway.local", [*CHAIN, ROOT.cert], [ROOT.cert], NOW, Reason.GATEWAY_TRUSTED, FINE),
        ("edgegateway.local", [SERVER.cert], [ROOT.cert, EDGE.cert], NOW, Reason.GATEWAY_TRUSTED, FINE),
        ("other.local", CHAIN, [ROOT.cert], NOW, Reason.HOSTNAME_MISMATCH,
         "the gateway's certificate is for edgegateway.local, 10.0.0.5, you dialled other.local"),
        ("edgegateway", CHAIN, [ROOT.cert], NOW, Reason.HOSTNAME_MISMATCH,
         "the gateway's certificate is for edgegateway.local, 10.0.0.5, you dialled edgegateway"),
        ("127.0.0.1", CHAIN, [ROOT.cert], NOW, Reason.HOSTNAME_MISMATCH,
         "the gateway's certificate is for edgegateway.local, 10.0.0.5, you dialled 127.0.0.1"),
        ("edgegateway.local", CHAIN, [OTHER_ROOT.cert], NOW, Reason.UNTRUSTED_CHAIN,
         SENT + "the chain needs CN=Gateway Root, which neither the gateway nor ca-file supplies; "
         "ca-file holds: CN=Someone Else)"),
        ("edgegateway.local", [SERVER.cert], [ROOT.cert], NOW, Reason.UNTRUSTED_CHAIN,
         "the gateway's chain does not lead to a root in ca-file (gateway sent: CN=edgegateway.local; "
         "the chain needs CN=Edge CA, which neither the gateway nor ca-file supplies; ca-file holds: CN=Gateway Root)"),
        ("edgegateway.local", CHAIN, [SAME_NAME_ROOT.cert], NOW, Reason.UNTRUSTED_CHAIN,
         SENT + "ca-file holds a root named CN=Gateway Root, but not the one that signed this chain "
         "(was the root regenerated under the same name?); ca-file holds: CN=Gateway Root)"),
        ("edgegateway.local", [*CHAIN, ROOT.cert], [OTHER_ROOT.cert], NOW, Reason.UNTRUSTED_CHAIN,
         "the gateway's chain does not lead to a root in ca-file (gateway sent: CN=edgegateway.local ← CN=Edge CA "
         "← CN=Gateway Root; it sent its own root CN=Gateway Root, which ca-file does not hold; "
         "ca-file holds: CN=Someone Else)"),
        ("edgegateway.local", CHAIN, [], NOW, Reason.UNTRUSTED_CHAIN, "ca-file holds: nothing)"),
        ("edgegateway.local", CHAIN, [ROOT.cert], NOW + timedelta(days=40), Reason.GATEWAY_CERT_EXPIRED,
         "the gateway's certificate expired on 2026-12-21 12:00 UTC"),
        ("edgegateway.local", CHAIN, [ROOT.cert], NOW - timedelta(days=3), Reason.GATEWAY_CERT_NOT_YET_VALID,
         "the gateway's certificate is not valid until 2026-11-21 11:55 UTC and this device's clock says "
         "2026-11-19 12:00 UTC: check the clock"),
        ("edgegateway.local", [SERVER.cert, STALE_EDGE.cert], [ROOT.cert], NOW, Reason.GATEWAY_CERT_EXPIRED,
         "the gateway's chain certificate CN=Edge CA expired on 2025-11-17 12:00 UTC"),
        ("edgegateway.local", [FROM_NOT_A_CA.cert, NOT_A_CA.cert], [ROOT.cert], NOW, Reason.INVALID_CHAIN,
         "the gateway's chain is invalid: CN=edgegateway.local is signed by CN=Edge CA, which is not a CA "
         "certificate"),
        # The device's clock is behind the root in its own ca-file: the clock, not "the chain is invalid".
        ("edgegateway.local", CHAIN, [ROOT.cert], NOW - timedelta(days=10, minutes=10),
         Reason.GATEWAY_CERT_NOT_YET_VALID, "not valid until"),
        ("edgegateway.local", CHAIN, [YOUNG_ROOT], NOW, Reason.GATEWAY_CERT_NOT_YET_VALID,
         "the root in ca-file CN=Gateway Root is not valid until 2026-11-22 13:00 UTC and this device's clock "
         "says 2026-11-22 12:00 UTC: check the clock"),
        ("edgegateway.local", [], [ROOT.cert], NOW, Reason.NO_GATEWAY_CERT, "the gateway presented no certificate"),
    ],
)
def test_diagnosis(dialled: str, chain: list[x509.Certificate], roots: list[x509.Certificate], now: datetime,
                   reason: Reason, message: str) -> None:
    found = diagnose(dialled, chain, roots, now)
    assert found.reason is reason
    assert message in str(found)


@pytest.mark.parametrize(
    ("name", "dialled", "matches"),
    [
        ("edgegateway.local", "edgegateway.local", True),
        ("edgegateway.local", "EDGEGATEWAY.LOCAL.", True),
        ("edgegateway.local", "edgegateway", False),
        ("*.edge.local", "gw.edge.local", True),
        ("*.edge.local", "a.gw.edge.local", False),
        ("*.edge.local", "edge.local", False),
        ("*.edge.local", ".edge.local", False),
        ("10.0.0.5", "10.0.0.5", True),
        ("10.0.0.5", "10.0.0.6", False),
        ("::1", "0:0:0:0:0:0:0:1", True),
        ("10.0.0.5", "edgegateway.local", False),
    ],
)
def test_name_matching(name: str, dialled: str, matches: bool) -> None:
    assert name_matches(name, dialled) is matches


@pytest.mark.parametrize(
    ("code", "reason", "words"),
    [
        (1, Reason.UNACCEPTABLE_PROTOCOL, "unacceptable protocol version"),
        (2, Reason.IDENTIFIER_REJECTED, "identifier rejected: the gateway does not accept 'TempSensor' as a client id"),
        (3, Reason.SERVER_UNAVAILABLE, "server unavailable: the gateway cannot vouch for devices right now"),
        (4, Reason.BAD_CREDENTIALS, "bad username or password: the gateway rejected the username 'gw/TempSensor/'"),
        (5, Reason.NOT_AUTHORIZED, "not authorized: the gateway does not recognise this device's certificate"),
        (137, Reason.REFUSED, "the gateway refused the connection with CONNACK code 137"),
    ],
)
def test_connack_refusals_in_words(code: int, reason: Reason, words: str) -> None:
    found = connack_refusal(code, "TempSensor", "gw/TempSensor/")
    assert found.reason is reason
    assert str(found).startswith(words)


@pytest.mark.parametrize(
    ("ssl_reason", "reason", "words"),
    [
        ("TLSV1_ALERT_UNKNOWN_CA", Reason.DEVICE_CERT_REJECTED,
         "the gateway does not trust the CA that issued this device's certificate (TLS alert unknown_ca)"),
        ("SSLV3_ALERT_BAD_CERTIFICATE", Reason.DEVICE_CERT_REJECTED, "(TLS alert bad_certificate)"),
        ("SSLV3_ALERT_UNSUPPORTED_CERTIFICATE", Reason.DEVICE_CERT_REJECTED, "it needs extendedKeyUsage clientAuth"),
        ("TLSV1_ALERT_ACCESS_DENIED", Reason.DEVICE_CERT_REJECTED, "(TLS alert access_denied)"),
        ("SSLV3_ALERT_CERTIFICATE_EXPIRED", Reason.DEVICE_CERT_EXPIRED, "this device's certificate has expired"),
        ("SSLV3_ALERT_CERTIFICATE_REVOKED", Reason.DEVICE_CERT_REVOKED, "this device's certificate is revoked"),
        ("TLSV13_ALERT_CERTIFICATE_REQUIRED", Reason.DEVICE_CERT_MISSING, "this device sent none"),
        ("WRONG_VERSION_NUMBER", Reason.NOT_TLS, "is this a plain MQTT port (1883)"),
        ("TLSV1_ALERT_PROTOCOL_VERSION", Reason.NO_COMMON_TLS, "share no TLS version"),
        ("SSLV3_ALERT_HANDSHAKE_FAILURE", Reason.NO_COMMON_TLS, "no cipher suite or key type in common"),
        ("UNEXPECTED_EOF_WHILE_READING", Reason.TLS_FAILED, "the TLS handshake with the gateway failed: boom"),
        (None, Reason.TLS_FAILED, "the TLS handshake with the gateway failed: boom"),
    ],
)
def test_tls_failures_in_words(ssl_reason: str | None, reason: Reason, words: str) -> None:
    found = tls_failure(ssl_reason, "boom")
    assert found.reason is reason
    assert words in str(found)


@pytest.mark.parametrize(
    ("exc", "reason", "words"),
    [
        (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), Reason.CONNECTION_REFUSED,
         "connection refused: nothing listens on gw:8883"),
        (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), Reason.NAME_UNRESOLVED,
         "cannot resolve gw: Name or service not known"),
        (TimeoutError("timed out"), Reason.TIMED_OUT, "no answer from gw:8883 within 5 s"),
        (OSError(errno.EHOSTUNREACH, "No route to host"), Reason.UNREACHABLE,
         "gw:8883 is unreachable: No route to host"),
        (ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"), Reason.TLS_FAILED,
         "gw:8883 reset the connection during the TLS handshake (is it a plain MQTT port"),
        (OSError(errno.EPERM, "Operation not permitted"), Reason.UNREACHABLE,
         "cannot reach gw:8883: Operation not permitted"),
    ],
)
def test_socket_failures_in_words(exc: OSError, reason: Reason, words: str) -> None:
    found = socket_failure(exc, "gw", 8883, 5.0)
    assert found.reason is reason
    assert str(found).startswith(words)


def _alert(reason: str) -> ssl.SSLError:
    exc = ssl.SSLError(1, f"[SSL: {reason}] alert")
    exc.reason = reason
    return exc


@pytest.mark.parametrize(
    ("answered", "error", "reason", "words"),
    [
        (False, _alert("TLSV1_ALERT_UNKNOWN_CA"), Reason.DEVICE_CERT_REJECTED, "the gateway does not trust the CA"),
        (False, None, Reason.CONNECTION_LOST, "the gateway hung up before answering CONNECT: it closed the connection"),
        (False, ConnectionResetError(errno.ECONNRESET, "reset"), Reason.CONNECTION_LOST,
         "the gateway hung up before answering CONNECT: [Errno 104] reset"),
        (True, None, Reason.CONNECTION_LOST, "connection to the gateway lost: The connection was lost."),
        (True, _alert("SSLV3_ALERT_CERTIFICATE_REVOKED"), Reason.CONNECTION_LOST, "connection to the gateway lost: "),
    ],
)
def test_lost_connections_in_words(answered: bool, error: OSError | None, reason: Reason, words: str) -> None:
    found = connection_lost(answered, error, "The connection was lost.")
    assert found.reason is reason
    assert str(found).startswith(words)


@pytest.mark.parametrize(
    ("code", "reason"),
    [(62, Reason.HOSTNAME_MISMATCH), (10, Reason.GATEWAY_CERT_EXPIRED), (9, Reason.GATEWAY_CERT_NOT_YET_VALID),
     (20, Reason.UNTRUSTED_CHAIN), (19, Reason.UNTRUSTED_CHAIN), (24, Reason.INVALID_CHAIN)],
)
def test_verification_failure_without_the_chain(code: int, reason: Reason) -> None:
    found = verification_failure(code, "some words", "edgegateway.local", "probe refused")
    assert found.reason is reason
    clock = ": check this device's clock (NTP) and the gateway's" if code in (9, 10) else ""
    assert str(found) == ("the gateway's certificate failed verification for edgegateway.local: some words "
                          "(probe refused)" + clock)


# Every reason, and whether retrying can fix it. The table must name them all.
RETRY_HELPS = {
    Reason.GATEWAY_TRUSTED: True, Reason.HOSTNAME_MISMATCH: False, Reason.UNTRUSTED_CHAIN: False,
    Reason.INVALID_CHAIN: False, Reason.GATEWAY_CERT_EXPIRED: True, Reason.GATEWAY_CERT_NOT_YET_VALID: True,
    Reason.NO_GATEWAY_CERT: False, Reason.DEVICE_CERT_REJECTED: False, Reason.DEVICE_CERT_EXPIRED: False,
    Reason.DEVICE_CERT_REVOKED: False, Reason.DEVICE_CERT_MISSING: False, Reason.NOT_TLS: False,
    Reason.NO_COMMON_TLS: False, Reason.TLS_FAILED: True, Reason.CONNECTION_REFUSED: True,
    Reason.NAME_UNRESOLVED: True, Reason.UNREACHABLE: True, Reason.TIMED_OUT: True, Reason.CONNECTION_LOST: True,
    Reason.NO_CONNACK: True, Reason.UNACCEPTABLE_PROTOCOL: False, Reason.IDENTIFIER_REJECTED: False,
    Reason.SERVER_UNAVAILABLE: True, Reason.BAD_CREDENTIALS: False, Reason.NOT_AUTHORIZED: False,
    Reason.REFUSED: True, Reason.DEVICE_CERT_NOT_YET_VALID: True,
}


def test_every_reason_says_whether_retrying_helps() -> None:
    assert set(RETRY_HELPS) == set(Reason)
    assert {r for r, helps in RETRY_HELPS.items() if not helps} == FATAL


@pytest.mark.parametrize(
    ("attempt", "base", "cap", "rand", "wait"),
    [
        (0, 1.0, 30.0, 0.0, 0.0),
        (0, 1.0, 30.0, 1.0, 1.0),
        (1, 1.0, 30.0, 1.0, 2.0),
        (3, 1.0, 30.0, 0.5, 4.0),
        (4, 1.0, 30.0, 1.0, 16.0),
        (5, 1.0, 30.0, 1.0, 30.0),
        (10, 1.0, 30.0, 0.5, 15.0),
        (10_000, 1.0, 30.0, 1.0, 30.0),
        (2, 0.25, 0.25, 1.0, 0.25),
    ],
)
def test_backoff_table(attempt: int, base: float, cap: float, rand: float, wait: float) -> None:
    assert next_backoff(attempt, base, cap, rand) == pytest.approx(wait)


@pytest.mark.parametrize(("attempt", "base", "cap", "rand"),
                         [(-1, 1.0, 30.0, 0.5), (0, 1.0, 30.0, 1.5), (0, 1.0, 30.0, -0.1), (0, 0.0, 30.0, 0.5),
                          (0, 40.0, 30.0, 0.5)])
def test_backoff_rejects_nonsense(attempt: int, base: float, cap: float, rand: float) -> None:
    with pytest.raises(ValueError):
        next_backoff(attempt, base, cap, rand)


@given(st.integers(0, 10_000), st.floats(0.01, 10.0), st.floats(10.0, 600.0), st.floats(0.0, 1.0),
       st.floats(0.0, 1.0))
def test_backoff_stays_under_a_doubling_ceiling(attempt: int, base: float, cap: float, r1: float, r2: float) -> None:
    ceiling = min(cap, base * 2.0 ** min(attempt, 64))
    low, high = sorted((r1, r2))
    assert 0.0 <= next_backoff(attempt, base, cap, low) <= next_backoff(attempt, base, cap, high) <= ceiling
    assert next_backoff(attempt, base, cap, 1.0) <= next_backoff(attempt + 1, base, cap, 1.0)


def test_readings_walk_within_bounds_and_count_up() -> None:
    for step in (1.0, -1.0):
        reading = first_reading(NOW, 0.5)
        for i in range(1000):
            reading = next_reading(reading, NOW + timedelta(seconds=i), step, step)
        assert reading.seq == 1001
        assert -10.0 <= reading.temperature <= 45.0
        assert 5.0 <= reading.humidity <= 95.0
    body = json.loads(reading.to_json())
    assert set(body) == {"temperature", "humidity", "seq", "ts"}
    assert body["ts"] == "2026-11-22T12:16:39.000Z"
    assert datetime.fromisoformat(body["ts"]) == NOW + timedelta(seconds=999)


def test_fleet_takes_the_first_n_sorted_cert_files() -> None:
    names = ["s-10.cert.pem", "s-02.key.pem", "s-02.cert.pem", "notes.txt", "s-01.cert.pem", "s-01.key.pem"]
    assert fleet_members(names, 2) == ["s-01", "s-02"]
    assert fleet_members(names, 9) == ["s-01", "s-02", "s-10"]


@pytest.mark.parametrize(
    ("results", "status"),
    [([], Exit.OK), ([Exit.OK, Exit.OK], Exit.OK), ([Exit.OK, Exit.STOPPED], Exit.STOPPED),
     ([Exit.REFUSED, Exit.STOPPED, Exit.OK], Exit.REFUSED)],
)
def test_fleet_exit_status_is_the_worst(results: list[Exit], status: Exit) -> None:
    assert fleet_exit(results) is status


def test_events_as_json_and_as_text() -> None:
    out = io.StringIO()
    Events(out, as_json=True).emit("TempSensor", "acked", "reading 1 acknowledged", seq=1)
    Events(out).emit("TempSensor", "acked", "reading 1 acknowledged", seq=1)
    json_line, text_line = out.getvalue().splitlines()
    assert json.loads(json_line) == {"device": "TempSensor", "event": "acked", "message": "reading 1 acknowledged",
                                     "seq": 1}
    assert text_line == "[TempSensor] reading 1 acknowledged"


def test_missing_or_mismatched_files_exit_1_before_dialling(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = ROOT.cert_pem.write_to_path(tmp_path / "root.pem")
    device = EDGE.issue_device_cert("TempSensor")
    cert = device.fullchain_pem().write_to_path(tmp_path / "TempSensor.cert.pem")
    key = device.private_key_pem.write_to_path(tmp_path / "TempSensor.key.pem", private=True)
    other_key = SERVER.private_key_pem.write_to_path(tmp_path / "other.key.pem", private=True)
    base = ["--gateway-hostname", "edgegateway.local", "--port", "1", "--count", "1"]

    assert main([*base, "--ca-file", str(tmp_path / "nope.pem"), "--cert", str(cert), "--key", str(key)]) == 1
    assert f"--ca-file {tmp_path / 'nope.pem'}: no such file" in capsys.readouterr().err
    assert main([*base, "--ca-file", str(root), "--cert", str(cert), "--key", str(other_key)]) == 1
    assert f"the key in {other_key} does not belong to the certificate in {cert}" in capsys.readouterr().err
    assert main([*base, "--ca-file", str(root), "--fleet", "2", "--fleet-dir", str(tmp_path)]) == 1
    assert "--fleet 2: only 1 ID.cert.pem files" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        main([*base, "--ca-file", str(root)])
    assert usage.value.code == 2


DEVICE = ROOT.issue_device_cert("TempSensor", not_before=NOW - timedelta(days=1), not_after=NOW + timedelta(days=30))


@pytest.mark.parametrize(
    ("now", "reason", "fatal", "words"),
    [
        (NOW - timedelta(days=40), Reason.DEVICE_CERT_NOT_YET_VALID, False,
         "not authorized: this device's certificate is valid from 2026-11-21 12:00 UTC and this device's clock says "
         "2026-10-13 12:00 UTC: check the clock"),
        (NOW + timedelta(days=40), Reason.DEVICE_CERT_EXPIRED, True,
         "not authorized: this device's certificate expired on 2026-12-22 12:00 UTC"),
        (NOW, Reason.NOT_AUTHORIZED, True, "not authorized: the gateway does not recognise"),
    ],
)
def test_a_refusal_its_own_dates_explain_names_the_clock(now: datetime, reason: Reason, fatal: bool,
                                                          words: str) -> None:
    found = connack_refusal(5, "TempSensor", "user", own_cert=DEVICE.cert, now=now)
    assert found.reason is reason
    assert found.fatal is fatal
    assert str(found).startswith(words)

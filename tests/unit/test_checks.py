"""`edgegate check`'s judgements (gateway.checks): pure functions over loaded data and `now`.

The hub failures are classified from the exceptions a real TLS handshake raises: the gateway's own hub
client context against a hub server context, joined over memory BIOs (no sockets, no clock patching).
"""

from __future__ import annotations

import socket
import ssl
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway import checks
from gateway.checks import HubFailure, HubProbe, Status
from gateway.config import HubConfig
from gateway.errors import PKIError
from gateway.pki import CA, IssuedCert, cert_pem
from gateway.tls.contexts import build_hub_client_context

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)
ROOT = CA.create_root("Root", now=NOW - 10 * DAY)
INTER = ROOT.create_child_ca("Intermediate", path_length=1, now=NOW - 10 * DAY)
EDGE = INTER.create_child_ca("Edge CA", path_length=0, now=NOW - 10 * DAY, days=100)
SERVER = EDGE.issue_server_cert("edgegateway.local", "10.1.2.3", now=NOW - DAY)
OTHER_ROOT = CA.create_root("Other Root", now=NOW - 10 * DAY)


# ---- validity ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("at", "quickstart", "status", "words"),
    [
        (NOW, False, Status.OK, "days left"),
        (NOW, True, Status.WARN, "not for production"),
        (EDGE.cert.not_valid_after_utc - 6 * DAY, False, Status.WARN, "renew it now"),
        (EDGE.cert.not_valid_after_utc - 7 * DAY - timedelta(hours=1), False, Status.OK, "7 days left"),
        (EDGE.cert.not_valid_after_utc + DAY, False, Status.FAIL, "expired on"),
        (EDGE.cert.not_valid_before_utc - DAY, False, Status.FAIL, "check the clock"),
    ],
    ids=["ok", "quickstart", "under-a-week", "a-week-and-a-day", "expired", "not-yet-valid"],
)
def test_validity(at: datetime, quickstart: bool, status: Status, words: str) -> None:
    result = checks.validity("Edge CA", EDGE.cert, at, quickstart=quickstart)
    assert result.status is status, result
    assert words in result.detail
    assert result.title == "Edge CA is valid"


# ---- files ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "status"),
    [(0o600, Status.OK), (0o400, Status.OK), (0o640, Status.FAIL), (0o604, Status.FAIL), (0o660, Status.FAIL)],
)
def test_key_file_modes(mode: int, status: Status) -> None:
    key = Path("/state/pki/edge-ca.key")
    result = checks.key_file_modes([(Path("/ok.key"), stat.S_IFREG | 0o600), (key, stat.S_IFREG | mode)])
    assert result.status is status
    if status is Status.FAIL:
        assert f"{key} has mode {mode:04o}: run chmod 600 {key}" in result.detail
        assert "/ok.key" not in result.detail


def test_files_exist_names_each_missing_file_with_its_key() -> None:
    files = [("trust_bundle_cert", Path("/c/root.pem"), True), ("hub.identity_pk", Path("/c/id.key"), False)]
    result = checks.files_exist(files)
    assert result.status is Status.FAIL
    assert result.detail == "hub.identity_pk: /c/id.key is missing"
    assert checks.files_exist(files[:1]).status is Status.OK
    assert checks.files_exist([]).status is Status.OK


# ---- server certificate -------------------------------------------------------------------------------


def test_server_names_match_or_say_what_changed() -> None:
    assert checks.server_names(SERVER.cert, EDGE.cert, "edgegateway.local", ["10.1.2.3"], NOW).status is Status.OK
    renamed = checks.server_names(SERVER.cert, EDGE.cert, "gateway2.local", ["10.1.2.3"], NOW)
    assert renamed.status is Status.WARN
    assert "differ from the configured" in renamed.detail
    new_edge = INTER.create_child_ca("New Edge CA", now=NOW - DAY)
    moved = checks.server_names(SERVER.cert, new_edge.cert, "edgegateway.local", ["10.1.2.3"], NOW)
    assert moved.status is Status.WARN
    assert "not the current Edge CA" in moved.detail


@pytest.mark.parametrize(
    ("chain", "roots", "hostname", "status", "words"),
    [
        ([SERVER.cert, EDGE.cert, INTER.cert], [ROOT.cert], "edgegateway.local", Status.OK, "CN=Root"),
        ([SERVER.cert, EDGE.cert, INTER.cert], [ROOT.cert], "10.1.2.3", Status.OK, "CN=Edge CA"),
        ([SERVER.cert, EDGE.cert, INTER.cert], [ROOT.cert], "other.local", Status.FAIL, "hostname_mismatch"),
        ([SERVER.cert, EDGE.cert], [ROOT.cert], "edgegateway.local", Status.FAIL, "chain_incomplete"),
        ([SERVER.cert, EDGE.cert, INTER.cert], [OTHER_ROOT.cert], "edgegateway.local", Status.FAIL, "chain_incomplete"),
    ],
    ids=["ok", "ok-ip", "wrong-hostname", "missing-intermediate", "wrong-bundle"],
)
def test_chain_to_bundle(chain: list[object], roots: list[object], hostname: str, status: Status, words: str) -> None:
    result = checks.chain_to_bundle(chain, roots, hostname, NOW)  # type: ignore[arg-type]
    assert result.status is status, result
    assert words in result.detail


def test_chain_to_bundle_says_when_the_cert_was_issued_in_memory() -> None:
    result = checks.chain_to_bundle([SERVER.cert, EDGE.cert, INTER.cert], [ROOT.cert], "edgegateway.local", NOW,
                                    issued_in_memory=True)
    assert result.status is Status.OK
    assert "issued in memory" in result.detail


def test_hostname_resolution() -> None:
    assert checks.hostname_resolution("gw.local", ["10.0.0.5"], None).status is Status.OK
    missing = checks.hostname_resolution("gw.local", [], "Name or service not known")
    assert missing.status is Status.WARN
    assert "/etc/hosts" in missing.detail


# ---- hub: real handshakes over memory BIOs -------------------------------------------------------------

# OpenSSL checks dates against the real clock, so these certificates are dated from it.
CLOCK = datetime.now(UTC)
HUB_ROOT = CA.create_root("Hub Root", now=CLOCK - DAY)
IDENTITY_ROOT = CA.create_root("Gateway Identity Issuer", now=CLOCK - DAY)
STRANGER_ROOT = CA.create_root("Stranger Root", now=CLOCK - DAY)
IDENTITY = IDENTITY_ROOT.issue_identity_cert("edge-gw-1", now=CLOCK)
RIGHT = HUB_ROOT.issue_server_cert("hub.local", now=CLOCK)
WRONG_NAME = HUB_ROOT.issue_server_cert("not-the-hub.local", now=CLOCK)
UNTRUSTED = STRANGER_ROOT.issue_server_cert("hub.local", now=CLOCK)
EXPIRED = HUB_ROOT.issue_server_cert("hub.local", not_before=CLOCK - 30 * DAY, not_after=CLOCK - 20 * DAY)


def hub_config(tmp_path: Path) -> HubConfig:
    return HubConfig(
        hostname="hub.local", url="https://127.0.0.1:8443", gateway_id="edge-gw-1",
        identity_cert=IDENTITY.cert_pem.write_to_path(tmp_path / "identity.pem"),
        identity_pk=IDENTITY.private_key_pem.write_to_path(tmp_path / "identity.key", private=True),
        trust_bundle_cert=HUB_ROOT.cert_pem.write_to_path(tmp_path / "hub-root.pem"),
    )


def hub_server_context(tmp_path: Path, server: IssuedCert, trusts: CA,
                       tls: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.maximum_version = tls
    chain = server.fullchain_pem().write_to_path(tmp_path / "hub-server.pem")
    key = server.private_key_pem.write_to_path(tmp_path / "hub-server.key", private=True)
    ctx.load_cert_chain(chain, key)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=cert_pem(trusts.cert).decode())
    return ctx


def handshake(client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext, server_hostname: str) -> Exception | None:
    """Join client and server over memory BIOs; the client's error, or None when it is connected and accepted."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=server_hostname)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    client_done = server_done = False
    for _ in range(10):
        try:
            client.do_handshake()
            client_done = True
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError as exc:
            return exc
        s_in.write(c_out.read())
        try:
            server.do_handshake()
            server_done = True
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError:
            server_done = True  # it refused; its alert is in s_out
        c_in.write(s_out.read())
        if client_done and server_done:
            break
    # With TLS 1.3 a refused client certificate is reported after the client's handshake: on the first read.
    try:
        client.read(1)
    except ssl.SSLWantReadError:
        return None
    except ssl.SSLError as exc:
        return exc
    return None


@pytest.mark.parametrize(
    ("server", "trusts", "tls", "failure"),
    [
        (RIGHT, IDENTITY_ROOT, ssl.TLSVersion.TLSv1_3, None),
        (RIGHT, IDENTITY_ROOT, ssl.TLSVersion.TLSv1_2, None),
        (WRONG_NAME, IDENTITY_ROOT, ssl.TLSVersion.TLSv1_3, HubFailure.WRONG_HOSTNAME),
        (UNTRUSTED, IDENTITY_ROOT, ssl.TLSVersion.TLSv1_3, HubFailure.UNTRUSTED_ROOT),
        (EXPIRED, IDENTITY_ROOT, ssl.TLSVersion.TLSv1_3, HubFailure.HUB_CERT_EXPIRED),
        (RIGHT, STRANGER_ROOT, ssl.TLSVersion.TLSv1_3, HubFailure.IDENTITY_REJECTED),
        (RIGHT, STRANGER_ROOT, ssl.TLSVersion.TLSv1_2, HubFailure.IDENTITY_REJECTED),
    ],
    ids=["ok-tls13", "ok-tls12", "wrong-hostname", "untrusted-root", "expired", "identity-rejected-tls13",
         "identity-rejected-tls12"],
)
def test_hub_tls_failures_are_named(tmp_path: Path, server: IssuedCert, trusts: CA, tls: ssl.TLSVersion,
                                    failure: HubFailure | None) -> None:
    hub = hub_config(tmp_path)
    client_ctx = build_hub_client_context(hub.trust_bundle_cert, hub.identity_cert, hub.identity_pk)
    error = handshake(client_ctx, hub_server_context(tmp_path, server, trusts, tls), hub.hostname)
    if failure is None:
        assert error is None
        result = checks.hub_reachable(hub, HubProbe(tls_version="TLSv1.3"))
        assert result.status is Status.OK
        assert result.title == "hub hub.local reachable at https://127.0.0.1:8443 with a trusted certificate"
        return
    assert error is not None
    probe = checks.classify_hub_error(error, 3.0)
    assert probe.failure is failure, probe
    result = checks.hub_reachable(hub, probe)
    assert result.status is Status.FAIL
    assert result.detail.startswith(f"{failure.value}: ")


def test_wrong_hostname_sentence_names_the_fix(tmp_path: Path) -> None:
    hub = hub_config(tmp_path)
    client_ctx = build_hub_client_context(hub.trust_bundle_cert, hub.identity_cert, hub.identity_pk)
    error = handshake(client_ctx, hub_server_context(tmp_path, WRONG_NAME, IDENTITY_ROOT), hub.hostname)
    assert error is not None
    detail = checks.hub_reachable(hub, checks.classify_hub_error(error, 3.0)).detail
    assert "not trusted" in detail
    assert "hub.local" in detail
    assert "hub.hostname must be a name" in detail


@pytest.mark.parametrize(
    ("error", "failure", "words"),
    [
        (ConnectionRefusedError(111, "Connection refused"), HubFailure.REFUSED, "nothing listens"),
        (TimeoutError("timed out"), HubFailure.TIMEOUT, "within 3 s"),
        (socket.gaierror(-2, "Name or service not known"), HubFailure.UNREACHABLE, "Name or service not known"),
        (OSError(113, "No route to host"), HubFailure.UNREACHABLE, "No route to host"),
        (PKIError("cannot use identity certificate x"), HubFailure.IDENTITY_UNUSABLE, "cannot use identity"),
    ],
    ids=["refused", "timeout", "dns", "no-route", "identity-files"],
)
def test_network_failures_are_named(error: Exception, failure: HubFailure, words: str) -> None:
    probe = checks.classify_hub_error(error, 3.0)
    assert probe.failure is failure
    assert words in probe.detail


def test_hub_not_configured_is_a_warning() -> None:
    assert checks.hub_not_configured().status is Status.WARN


# ---- database ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error", "expected", "words"),
    [
        (("abc123", "abc123"), None, Status.OK, "abc123"),
        (None, None, Status.WARN, "not created yet"),
        ((None, "abc123"), None, Status.WARN, "edgegate db upgrade"),
        (("old1", "abc123"), None, Status.WARN, "at old1, latest is abc123"),
        (None, "cannot connect to postgresql://u@db/x", Status.FAIL, "cannot connect"),
    ],
    ids=["latest", "missing", "empty", "behind", "unreachable"],
)
def test_database(status: tuple[str | None, str] | None, error: str | None, expected: Status, words: str) -> None:
    result = checks.database("sqlite:///state/edgegate.db", status, error)
    assert result.status is expected
    assert words in result.detail


def test_marks() -> None:
    assert [s.mark for s in Status] == ["✔", "⚠", "✖"]


@pytest.mark.parametrize(("version", "failure"), [
    ("TLSv1.3", checks.HubFailure.IDENTITY_REJECTED),
    ("TLSv1.2", checks.HubFailure.TLS_FAILED),
    (None, checks.HubFailure.TLS_FAILED),
])
def test_a_hub_that_hangs_up_after_the_handshake(version: str | None, failure: checks.HubFailure) -> None:
    probe = checks.closed_after_handshake(version, "end of stream")
    assert probe.failure is failure
    assert "end of stream" in probe.detail

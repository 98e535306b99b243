"""Live sessions follow their certificates: expired_sessions and anchor_lost_sessions as tables, and the
sweep's bookkeeping with plain callables for the front door."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest

from gateway.auth.decision import AuthPolicy, ConnectClaim, authenticate
from gateway.auth.live import CA_REMOVED, AdmittedChain, anchor_lost_sessions, expired_sessions, session_deadline
from gateway.auth.reasons import Reason
from gateway.metrics import Counters
from gateway.pki import CA, IssuedCert, self_signed_device_cert, thumbprint_sha1, thumbprint_sha256
from gateway.records import AuthType, DeviceRecord, PeerIdentity, TrustAnchors
from gateway.session_sweep import SessionSweep

T = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)
SKEW = timedelta(seconds=30)

ROOT = CA.create_root("Device Root", path_length=1, now=T - 100 * DAY)
INTER = ROOT.create_child_ca("Device Intermediate", now=T - 100 * DAY)
SHORT_INTER = ROOT.create_child_ca("Short Intermediate", not_before=T - 100 * DAY, not_after=T + 10 * DAY)
OTHER_ROOT = CA.create_root("Other Root", path_length=1, now=T - 100 * DAY)
OTHER_INTER = OTHER_ROOT.create_child_ca("Other Intermediate", now=T - 100 * DAY)


def peer(issued: IssuedCert, *, with_chain: bool = True) -> PeerIdentity:
    chain = (issued.cert, *(c for c in issued.chain if c.issuer != c.subject)) if with_chain else (issued.cert,)
    return PeerIdentity(chain, thumbprint_sha256(issued.cert), thumbprint_sha1(issued.cert))


def admitted(issued: IssuedCert) -> AdmittedChain:
    return AdmittedChain.of(peer(issued))


EXPIRING = INTER.issue_device_cert("expiring", not_before=T - DAY, not_after=T)
LASTING = INTER.issue_device_cert("lasting", now=T - DAY)
UNDER_SHORT = SHORT_INTER.issue_device_cert("under-short", not_before=T - DAY, not_after=T + 100 * DAY)
SELF = self_signed_device_cert("self", not_before=T - DAY, not_after=T + timedelta(seconds=10))


@pytest.mark.parametrize(
    ("device", "now", "code", "words"),
    [
        (EXPIRING, T, None, None),
        (EXPIRING, T + SKEW, None, None),  # the skew is a tolerance, as at CONNECT
        (EXPIRING, T + SKEW + timedelta(seconds=1), "cert_expired", "the device certificate expired on 2026-12-01"),
        (LASTING, T + 100 * DAY, None, None),
        (UNDER_SHORT, T + 11 * DAY, "chain_expired", "the chain certificate CN=Short Intermediate expired on"),
        (SELF, T + timedelta(minutes=1), "cert_expired", "the device certificate expired"),
    ],
)
def test_expired_sessions(device: IssuedCert, now: datetime, code: str | None, words: str | None) -> None:
    ends = expired_sessions([("d", admitted(device))], now, SKEW)
    if code is None:
        assert ends == []
        return
    assert [(e.device_id, e.code) for e in ends] == [("d", code)]
    assert words is not None
    assert words in ends[0].message


def test_the_device_gets_the_same_sentence_on_reconnect() -> None:
    now = T + timedelta(minutes=5)
    [end] = expired_sessions([("expiring", admitted(EXPIRING))], now, SKEW)
    record = DeviceRecord("expiring", True, AuthType.CERTIFICATE_AUTHORITY, "gw")
    decision = authenticate(peer(EXPIRING), ConnectClaim("expiring"), record,
                            AuthPolicy("gw", TrustAnchors((ROOT.cert,)), SKEW), now)
    assert decision.reason is Reason.CERT_EXPIRED
    assert decision.message == end.message


def test_deadline_is_the_first_not_after_in_the_chain() -> None:
    assert session_deadline(peer(UNDER_SHORT)) == T + 10 * DAY
    assert session_deadline(PeerIdentity((), None, None)) is None


def test_a_live_session_keeps_the_chain_as_der_and_gets_it_back_whole() -> None:
    sent = peer(UNDER_SHORT)
    held = AdmittedChain.of(sent)
    assert all(isinstance(d, bytes) for d in held.der)
    assert held.deadline == T + 10 * DAY
    assert held.sha256 == sent.sha256
    assert held.peer().chain == sent.chain
    assert AdmittedChain.of(PeerIdentity((), None, None)).peer().chain == ()


OLD = TrustAnchors((ROOT.cert, OTHER_INTER.cert))
ON_OTHER = OTHER_INTER.issue_device_cert("on-other", now=T - DAY)


@pytest.mark.parametrize(
    ("new", "device", "lost"),
    [
        (TrustAnchors((ROOT.cert,)), ON_OTHER, True),  # its registered intermediate was removed
        (TrustAnchors((ROOT.cert,)), LASTING, False),  # another CA's device stays
        (TrustAnchors((OTHER_INTER.cert,)), LASTING, True),
        (TrustAnchors(()), LASTING, True),
        (TrustAnchors((OTHER_INTER.cert, INTER.cert)), LASTING, False),  # still reaches a registered CA
        (TrustAnchors(()), SELF, False),  # thumbprint devices reach no CA
        (OLD, LASTING, False),
    ],
)
def test_anchor_lost_sessions(new: TrustAnchors, device: IssuedCert, lost: bool) -> None:
    ends = anchor_lost_sessions([("d", admitted(device))], OLD, new, T)
    assert [e.code for e in ends] == ([CA_REMOVED] if lost else [])
    if lost:
        assert "was removed from the hub" in ends[0].message


async def test_the_sweep_kicks_counts_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    now = [T]
    sessions = {"expiring": admitted(EXPIRING), "lasting": admitted(LASTING)}
    kicked: list[tuple[str, str]] = []

    def kick(device_id: str, reason: str) -> bool:
        kicked.append((device_id, reason))
        return sessions.pop(device_id, None) is not None

    counters = Counters()
    sweep = SessionSweep(lambda: list(sessions.items()), kick, clock=lambda: now[0], skew=SKEW, counters=counters)
    caplog.set_level(logging.WARNING, logger="edgegate.sessions")
    assert sweep.sweep() == []
    now[0] = T + timedelta(minutes=1)
    [end] = sweep.sweep()
    assert end.device_id == "expiring"
    assert kicked == [("expiring", end.message)]
    assert sweep.sweep() == []
    assert counters.get("edgegate_sessions_closed_total", reason="cert_expired") == 1
    [line] = [r.getMessage() for r in caplog.records]
    assert line.startswith(f"session closed device=expiring thumbprint={EXPIRING.thumbprint_sha256} "
                           "reason=cert_expired: the device certificate expired on")

    await sweep.close_orphans(TrustAnchors((ROOT.cert,)), TrustAnchors(()))
    assert kicked[-1][0] == "lasting"
    assert counters.get("edgegate_sessions_closed_total", reason=CA_REMOVED) == 1

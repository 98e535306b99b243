"""The clock floor: judge_clock as a table, the clock watch with an injected wall and monotonic clock,
and the quickstart PKI holding its certificates while the clock cannot be trusted."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.clock_floor import (
    BUILD_DATE,
    ClockState,
    Evidence,
    clock_jump,
    human_span,
    issue_not_before,
    judge_clock,
    projected,
)
from gateway.clock_watch import ClockWatch, read_last_seen, write_last_seen
from gateway.pki.edge_ca import ensure_quickstart_edge_ca, ensure_server_cert

T = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)
TOL = timedelta(minutes=5)
CERT = Evidence(T - 2 * DAY, "the newest certificate held (CN=edge ca)")

B, A, OK = ClockState.BEHIND, ClockState.AHEAD, ClockState.TRUSTED


@pytest.mark.parametrize(
    ("wall", "last_seen", "cert", "hub", "state", "now", "off", "source"),
    [
        (T, None, None, None, OK, T, timedelta(0), ""),
        (T, T - DAY, CERT, None, OK, T, timedelta(0), ""),
        # 40 days behind the last time seen: act on the last time seen.
        (T - 40 * DAY, T, None, None, B, T, 40 * DAY, "the last time this gateway saw"),
        (T - 40 * DAY, T - 50 * DAY, CERT, None, B, T - 2 * DAY, 38 * DAY, "the newest certificate held (CN=edge ca)"),
        # Two years behind: even the build date says so.
        (BUILD_DATE - 730 * DAY, None, None, None, B, BUILD_DATE, 730 * DAY, "this release's build date"),
        # Within the tolerance: trusted.
        (T - timedelta(minutes=4), T, None, None, OK, T - timedelta(minutes=4), timedelta(0), ""),
        # Ahead is invisible without the hub...
        (T + 40 * DAY, T, CERT, None, OK, T + 40 * DAY, timedelta(0), ""),
        # ...and plain with it.
        (T + 40 * DAY, T, CERT, T, A, T, 40 * DAY, "the hub's clock"),
        (T - 40 * DAY, None, None, T, B, T, 40 * DAY, "the hub's clock"),
        # The hub's word clears a last-seen time written by a clock that once ran ahead.
        (T, T + 40 * DAY, None, T, OK, T, timedelta(0), "the hub's clock"),
    ],
)
def test_judge_clock(wall: datetime, last_seen: datetime | None, cert: Evidence | None, hub: datetime | None,
                     state: ClockState, now: datetime, off: timedelta, source: str) -> None:
    verdict = judge_clock(wall, last_seen=last_seen, newest_not_before=cert, hub_date=hub, tolerance=TOL)
    assert verdict.state is state
    assert verdict.now == now
    assert verdict.off_by == off
    if state is not OK:
        assert verdict.source == source


def test_sentences_say_how_far_and_against_what() -> None:
    behind = judge_clock(T - 40 * DAY, last_seen=T, tolerance=TOL)
    assert behind.sentence.startswith("the system clock is 40 days behind the last time this gateway saw; "
                                      "NTP not synced?")
    ahead = judge_clock(T + 3 * timedelta(hours=1), hub_date=T, tolerance=TOL)
    assert ahead.sentence.startswith("the system clock is 3 hours ahead of the hub's clock; NTP not synced?")


@pytest.mark.parametrize(
    ("span", "words"),
    [(40 * DAY, "40 days"), (730 * DAY, "2 years"), (400 * DAY, "400 days"), (DAY, "1 day"),
     (timedelta(hours=3), "3 hours"), (timedelta(minutes=12), "12 minutes"), (timedelta(seconds=45), "45 seconds")],
)
def test_human_span(span: timedelta, words: str) -> None:
    assert human_span(span) == words


@pytest.mark.parametrize(
    ("previous", "offset", "jump"),
    [(1000.0, 1000.5, None), (1000.0, 1029.0, None), (1000.0, 1000.0 + 40 * 86400, 40 * DAY),
     (1000.0, 1000.0 - 3600, -timedelta(hours=1))],
)
def test_clock_jump(previous: float, offset: float, jump: timedelta | None) -> None:
    assert clock_jump(previous, offset) == jump


def test_projected_evidence_advances_with_the_monotonic_clock_only() -> None:
    assert projected(T, 100.0, 160.0) == T + timedelta(seconds=60)
    assert projected(T, 100.0, 90.0) == T


def test_issued_certificates_are_never_dated_after_the_floor() -> None:
    # Ahead without a hub: judged trusted, yet what it issues is valid from the last time seen.
    ahead = judge_clock(T + 40 * DAY, last_seen=T, tolerance=TOL)
    assert issue_not_before(ahead, TOL) == T - TOL
    behind = judge_clock(T - 40 * DAY, last_seen=T, tolerance=TOL)
    assert issue_not_before(behind, TOL) == T - 40 * DAY - TOL


class Clocks:
    def __init__(self, wall: datetime) -> None:
        self.wall_at, self.mono_at = wall, 1000.0

    def wall(self) -> datetime:
        return self.wall_at

    def mono(self) -> float:
        return self.mono_at

    def advance(self, seconds: float) -> None:
        self.wall_at += timedelta(seconds=seconds)
        self.mono_at += seconds


def test_watch_holds_until_the_clock_is_stepped_right(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_last_seen(tmp_path / "clock.json", T)
    clocks = Clocks(T - 40 * DAY)
    caplog.set_level(logging.WARNING, logger="edgegate.clock")
    watch = ClockWatch(tmp_path, tolerance=TOL, wall=clocks.wall, monotonic=clocks.mono)
    seen: list[tuple[ClockState, timedelta | None]] = []
    watch.on_change(lambda verdict, jump: seen.append((verdict.state, jump)))
    assert watch.verdict.state is B
    assert watch.now() == T
    clocks.advance(30)
    assert watch.now() == T + timedelta(seconds=30)  # the floor advances with the monotonic clock
    watch.tick()
    assert seen == []  # nothing changed: said once, not at every check
    assert read_last_seen(tmp_path / "clock.json") == T  # a wrong clock never lowers it
    clocks.wall_at = T + timedelta(seconds=40)  # NTP steps the clock
    watch.tick()
    assert seen == [(OK, 40 * DAY + timedelta(seconds=10))]
    assert watch.now() == T + timedelta(seconds=40)
    assert read_last_seen(tmp_path / "clock.json") == T + timedelta(seconds=40)
    said = [r.getMessage() for r in caplog.records]
    assert sum("NTP not synced?" in line for line in said) == 1
    assert any("stepped forward by 40 days" in line for line in said)
    assert any("trusted again" in line for line in said)


def test_watch_believes_the_hub(tmp_path: Path) -> None:
    clocks = Clocks(T + 40 * DAY)
    watch = ClockWatch(tmp_path, tolerance=TOL, wall=clocks.wall, monotonic=clocks.mono)
    assert watch.tick().state is OK
    watch.hub_date(T)
    clocks.advance(5)
    verdict = watch.tick()
    assert verdict.state is A
    assert watch.now() == T + timedelta(seconds=5)


def test_unreadable_last_seen_is_no_evidence(tmp_path: Path) -> None:
    (tmp_path / "clock.json").write_text("{not json")
    assert read_last_seen(tmp_path / "clock.json") is None
    assert read_last_seen(tmp_path / "missing.json") is None


def test_quickstart_pki_holds_while_the_clock_is_behind(tmp_path: Path) -> None:
    edge = ensure_quickstart_edge_ca(tmp_path, now=T - 25 * DAY)
    server = ensure_server_cert(tmp_path, edge.ca, "gw.local", now=T - 25 * DAY)
    files = {p: p.read_bytes() for p in (edge.cert_path, server.chain_path)}
    # 40 days behind, the certificates look not yet valid: held, not replaced.
    behind = T - 40 * DAY
    held_edge = ensure_quickstart_edge_ca(tmp_path, now=behind, hold=True)
    held = ensure_server_cert(tmp_path, held_edge.ca, "gw.local", now=behind, hold=True)
    assert not held.issued
    assert {p: p.read_bytes() for p in files} == files
    # A wrong name is still a reason, clock or not.
    renamed = ensure_server_cert(tmp_path, held_edge.ca, "other.local", now=behind, hold=True)
    assert renamed.issued
    # Trusted again and due: renewed.
    renewed = ensure_server_cert(tmp_path, held_edge.ca, "other.local", now=T + 30 * DAY)
    assert renewed.issued


def test_a_backdated_certificate_is_renewed_as_often_as_any(tmp_path: Path) -> None:
    edge = ensure_quickstart_edge_ca(tmp_path, now=T)
    first = ensure_server_cert(tmp_path, edge.ca, "gw.local", now=T, not_before=T - 300 * DAY)
    assert first.issued
    again = ensure_server_cert(tmp_path, edge.ca, "gw.local", now=T + DAY)
    assert not again.issued  # not due: 300 days of backdating do not count as lifetime
    due = ensure_server_cert(tmp_path, edge.ca, "gw.local", now=T + 25 * DAY)
    assert due.issued


def test_a_step_is_seen_by_the_next_decision_not_the_next_check(tmp_path: Path) -> None:
    write_last_seen(tmp_path / "clock.json", T)
    clocks = Clocks(T + timedelta(seconds=5))
    watch = ClockWatch(tmp_path, tolerance=TOL, wall=clocks.wall, monotonic=clocks.mono)
    assert watch.now() == T + timedelta(seconds=5)  # trusted: the wall clock as it is
    clocks.wall_at = T - 40 * DAY  # stepped back below the floor, between two checks
    assert watch.now() == T  # the floor (last seen, advanced by the 0 s since start)
    assert watch.epoch() == T.timestamp()

"""status.json and `edgegate status` / `edgegate db`: what the operator sees, from the database and the
file the running gateway writes."""

from __future__ import annotations

import json
import os
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.cache.records import CacheSummary, SyncStatus
from gateway.cache.repository import CacheRepository
from gateway.cli.main import main
from gateway.cli.status import STATUS_STALE_AFTER, build_report, memory_line, render_text
from gateway.db.engine import head_revision, open_engine
from gateway.records import AuthType, DeviceRecord
from gateway.service.status_file import read_status, write_status

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def test_write_status_is_atomic_and_stamped(tmp_path: Path) -> None:
    path = tmp_path / "state" / "status.json"
    assert read_status(path) is None
    write_status(path, {"connected_devices": 3, "outbox_depth": 12}, now=NOW)
    status = read_status(path)
    assert status == {"connected_devices": 3, "outbox_depth": 12, "written_at": NOW.isoformat(), "pid": os.getpid()}
    assert sorted(p.name for p in path.parent.iterdir()) == ["status.json"]  # no temporary files left

    # Readers racing a writer only ever see whole files.
    stop = threading.Event()
    seen: list[object] = []

    def reader() -> None:
        while not stop.is_set():
            seen.append(read_status(path))

    thread = threading.Thread(target=reader)
    thread.start()
    for n in range(300):
        write_status(path, {"connected_devices": n, "padding": "x" * 5000})
    stop.set()
    thread.join()
    assert seen
    assert all(isinstance(value, dict) and "written_at" in value for value in seen)

    path.write_text("{half")
    assert read_status(path) is None
    path.write_text("[1, 2]")
    assert read_status(path) is None


def summary(status: SyncStatus) -> CacheSummary:
    return CacheSummary(
        devices=10, enabled=9, oldest_fetched_at=NOW - timedelta(hours=2), newest_fetched_at=NOW,
        cas=1, sequence=77, status=status,
    )


def test_report_prefers_the_running_gateway_and_ignores_a_stale_status_file() -> None:
    status = SyncStatus(online=True, online_since=NOW - timedelta(hours=1), last_success_at=NOW - timedelta(seconds=5),
                        last_attempt_at=NOW - timedelta(seconds=5), last_full_sync_at=NOW - timedelta(minutes=30))
    live = {"written_at": (NOW - timedelta(seconds=3)).isoformat(), "pid": 4242, "connected_devices": 7,
            "outbox_depth": 120, "sync": {"state": "offline"}}
    report = build_report(database="sqlite:///x.db", revision="0001_cache", head="0001_cache",
                          summary=summary(status), live=live, now=NOW, offline_trust=timedelta(days=7))
    assert report["gateway"] == {"running": True, "pid": 4242, "status_written_at": "2026-11-22T11:59:57Z"}
    assert (report["connected_devices"], report["outbox_depth"]) == (7, 120)
    assert report["hub"]["state"] == "offline"  # the live view wins over the database's last word
    assert report["hub"]["as_of_last_run"] is False
    assert report["cache"] == {
        "devices": 10, "enabled": 9, "registered_cas": 1, "sequence": 77,
        "oldest_entry_at": "2026-11-22T10:00:00Z", "newest_entry_at": "2026-11-22T12:00:00Z",
        "offline_trust_seconds": 604800.0, "usable": True,
    }
    text = render_text(report, NOW)
    assert "running (pid 4242" in text
    assert "7 connected" in text
    assert "120 messages waiting" in text

    stale = live | {"written_at": (NOW - STATUS_STALE_AFTER - timedelta(seconds=1)).isoformat()}
    report = build_report(database="sqlite:///x.db", revision="0001_cache", head="0001_cache",
                          summary=summary(status), live=stale, now=NOW, offline_trust=None)
    assert report["gateway"]["running"] is False
    assert (report["connected_devices"], report["outbox_depth"]) == (None, None)
    assert (report["hub"]["state"], report["hub"]["as_of_last_run"]) == ("online", True)
    text = render_text(report, NOW)
    assert "not running" in text
    assert "online (as of the last run) since 2026-11-22T11:00:00Z (60m ago)" in text
    assert "offline trust forever: usable" in text


def test_report_of_an_offline_cache_past_its_trust() -> None:
    status = SyncStatus(online=False, offline_since=NOW - timedelta(days=8), last_success_at=NOW - timedelta(days=8),
                        last_attempt_at=NOW - timedelta(seconds=30), last_error="connection refused")
    report = build_report(database="d", revision="0001_cache", head="0001_cache", summary=summary(status),
                          live=None, now=NOW, offline_trust=timedelta(days=7))
    assert report["cache"]["usable"] is False
    text = render_text(report, NOW)
    assert "failed: connection refused" in text
    assert "TOO OLD" in text
    assert "offline (as of the last run) since 2026-11-14T12:00:00Z (192h ago)" in text


@pytest.mark.parametrize(("memory", "expected"), [
    (None, None),
    ({"anonymous_mib": None, "limit_mib": 256.0, "pressure": "clear", "ceiling": None}, None),
    ({"anonymous_mib": 61.4, "limit_mib": None, "pressure": "clear", "ceiling": None},
     "61 MiB anonymous, no limit (no memory guard)"),
    ({"anonymous_mib": 212.7, "limit_mib": 256.0, "pressure": "clear", "ceiling": None},
     "213 of 256 MiB anonymous (83%): clear"),
    ({"anonymous_mib": 231.0, "limit_mib": 256.0, "pressure": "refusing", "ceiling": None},
     "231 of 256 MiB anonymous (90%): SHORT: refusing new devices"),
    ({"anonymous_mib": 231.0, "limit_mib": 256.0, "pressure": "refusing", "ceiling": None, "measured": "cgroup"},
     "231 of 256 MiB in use in the cgroup (less its page cache) (90%): SHORT: refusing new devices"),
    ({"anonymous_mib": 240.0, "limit_mib": 256.0, "pressure": "holding", "ceiling": 3764},
     "240 of 256 MiB anonymous (94%): SHORT: refusing new devices and holding connected devices' reads; at most "
     "3764 devices admitted (memory held no more at this load: raise the memory limit or send smaller readings)"),
])
def test_memory_line(memory: object, expected: str | None) -> None:
    assert memory_line(memory) == expected


def test_the_report_carries_the_memory_guard_to_the_text() -> None:
    live = {"written_at": (NOW - timedelta(seconds=3)).isoformat(), "pid": 4242, "connected_devices": 3764,
            "outbox_depth": 0, "memory": {"anonymous_mib": 220.0, "limit_mib": 256.0, "pressure": "clear",
                                          "ceiling": 3764}}
    report = build_report(database="d", revision="r", head="r", summary=None, live=live, now=NOW,
                          offline_trust=None)
    text = render_text(report, NOW)
    assert "memory       220 of 256 MiB anonymous (86%): clear; at most 3764 devices admitted" in text
    stale = live | {"written_at": (NOW - STATUS_STALE_AFTER - timedelta(seconds=1)).isoformat()}
    report = build_report(database="d", revision="r", head="r", summary=None, live=stale, now=NOW, offline_trust=None)
    assert "memory" not in render_text(report, NOW)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text('hostname = "edgegateway.local"\nstate_dir = "state"\n[sync]\noffline_trust = "1d"\n')
    return path


def test_db_and_status_verbs(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = config.parent / "state"
    assert main(["db", "current", "-c", str(config)]) == 1
    assert "no database yet" in capsys.readouterr().out
    assert not (state / "edgegate.db").exists()  # asking did not create it

    assert main(["status", "-c", str(config)]) == 3  # not running: a probe must see it
    assert "no device cache yet" in capsys.readouterr().out

    assert main(["db", "upgrade", "-c", str(config)]) == 0
    assert f"at {head_revision()} (newest)" in capsys.readouterr().out
    assert main(["db", "current", "-c", str(config)]) == 0
    capsys.readouterr()

    engine = open_engine(f"sqlite:///{state / 'edgegate.db'}")
    repository = CacheRepository(engine)
    fetched = datetime.now(UTC) - timedelta(minutes=5)
    repository.apply(
        upserts=[DeviceRecord(f"d{n}", n % 2 == 0, AuthType.SELF_SIGNED, "gw", "aa" * 32) for n in range(4)],
        deletes=[], fetched_at=fetched, sequence=9, cas=[],
    )
    repository.save_status(SyncStatus(online=True, online_since=fetched, last_success_at=fetched,
                                      last_attempt_at=fetched, last_full_sync_at=fetched))
    engine.dispose()
    write_status(state / "status.json", {"connected_devices": 2, "outbox_depth": 5, "sync": {"state": "online"}})

    assert main(["status", "-c", str(config), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["gateway"]["running"] is True
    assert (report["connected_devices"], report["outbox_depth"]) == (2, 5)
    assert report["hub"]["state"] == "online"
    assert (report["cache"]["devices"], report["cache"]["enabled"], report["cache"]["sequence"]) == (4, 2, 9)
    assert report["cache"]["usable"] is True
    assert main(["status", "-c", str(config)]) == 0
    text = capsys.readouterr().out
    assert "4 devices (2 enabled)" in text
    assert "2 connected" in text

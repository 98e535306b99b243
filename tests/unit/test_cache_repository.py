"""The cache tables through their repository, and the migrations that make them: SQLite always,
PostgreSQL too when EDGEGATE_TEST_PG_URL is set."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

from gateway.cache.records import RegisteredCA, SyncStatus
from gateway.cache.repository import CacheRepository
from gateway.db import engine as db
from gateway.db.engine import database_exists, head_revision, migration_status, open_engine, upgrade
from gateway.db.table_modules import TABLE_MODULES, load_table_modules
from gateway.errors import StorageError
from gateway.records import AuthType, DeviceRecord

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
CA = RegisteredCA("devices", "-----BEGIN CERTIFICATE-----\n...", "cc" * 32)


def device(n: int, **changes: object) -> DeviceRecord:
    record = DeviceRecord(f"device-{n:06d}", True, AuthType.SELF_SIGNED, "gw1", f"{n:064x}", None, n)
    return replace(record, **changes)  # type: ignore[arg-type]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database: a SQLite file, or a PostgreSQL schema of its own (dropped afterwards)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/nested/dir/edgegate.db"
        return
    base = os.environ.get("EDGEGATE_TEST_PG_URL")
    if not base:
        pytest.skip("EDGEGATE_TEST_PG_URL is not set (make test starts a PostgreSQL server)")
    schema = f"cache_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        yield make_url(base).update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
            hide_password=False
        )
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@pytest.fixture
def repository(database_url: str) -> Iterator[CacheRepository]:
    upgrade(database_url)
    engine = open_engine(database_url)
    yield CacheRepository(engine)
    engine.dispose()


# -- migrations ------------------------------------------------------------------------------------


def test_upgrade_creates_the_schema_and_status_reports_it(database_url: str) -> None:
    head = head_revision()  # later migrations (the outbox's) build on 0001_cache
    assert migration_status(database_url) == (None, head)
    assert upgrade(database_url) == head
    assert migration_status(database_url) == (head, head)
    assert upgrade(database_url) == head  # idempotent
    engine = open_engine(database_url)
    assert {"cache_devices", "cache_cas", "cache_sync_state"} <= set(inspect(engine).get_table_names())
    engine.dispose()


def test_migrations_match_the_table_definitions(database_url: str) -> None:
    upgrade(database_url)
    engine = open_engine(database_url)
    metadata = load_table_modules()
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)
    engine.dispose()
    mine = [d for d in diffs if "cache_" in repr(d)]
    assert mine == []


def test_sqlite_runs_in_wal_mode_with_foreign_keys(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/a/b/edgegate.db"
    assert not database_exists(url)
    engine = open_engine(url)
    with engine.connect() as conn:
        pragmas = [conn.exec_driver_sql(f"PRAGMA {name}").scalar() for name in
                   ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")]
    engine.dispose()
    assert pragmas == ["wal", 1, 1, db.SQLITE_BUSY_TIMEOUT_MS]  # synchronous 1 = NORMAL
    assert database_exists(url)


def test_table_modules_that_do_not_exist_are_skipped() -> None:
    assert "gateway.cache.tables" in TABLE_MODULES
    assert {"cache_devices", "cache_cas", "cache_sync_state"} <= set(load_table_modules().tables)


def test_storage_failures_become_storage_errors(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="not a database URL"):
        open_engine("no url at all")
    with pytest.raises(StorageError, match="unsupported database 'mysql'"):
        open_engine("mysql://u:secret@h/db")
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StorageError) as failed:
        upgrade(f"sqlite:///{blocker}/sub/edgegate.db")  # a file where a directory should be
    assert isinstance(failed.value.__cause__, OSError)
    dead = "postgresql://edgegate:hunter2@127.0.0.1:1/nothing"
    with pytest.raises(StorageError) as refused:
        migration_status(dead)
    assert "hunter2" not in str(refused.value)  # passwords never reach messages
    assert "***" in str(refused.value)
    engine = open_engine(f"sqlite:///{tmp_path}/never-migrated.db")
    with pytest.raises(StorageError, match="loading the device cache"):
        CacheRepository(engine).load()  # no tables: a StorageError, chained
    engine.dispose()


# -- the repository --------------------------------------------------------------------------------


def test_empty_cache_loads_empty(repository: CacheRepository) -> None:
    snapshot = repository.load()
    assert (snapshot.devices, snapshot.cas, snapshot.sequence, snapshot.status) == ((), (), None, SyncStatus())


def test_apply_upserts_deletes_cas_and_cursor_in_one_go(repository: CacheRepository) -> None:
    repository.apply(upserts=[device(1), device(2), device(3)], deletes=[], fetched_at=T0, sequence=3, cas=[CA])
    t1 = T0 + timedelta(minutes=1)
    repository.apply(upserts=[device(2, enabled=False, generation=4)], deletes=["device-000003", "ghost"],
                     fetched_at=t1, sequence=5)
    snapshot = repository.load()
    assert sorted(snapshot.devices, key=lambda d: d.device_id) == [device(1), device(2, enabled=False, generation=4)]
    assert (snapshot.cas, snapshot.sequence) == ((CA,), 5)
    summary = repository.summary()
    assert (summary.devices, summary.enabled, summary.cas, summary.sequence) == (2, 1, 1, 5)
    assert (summary.oldest_fetched_at, summary.newest_fetched_at) == (T0, t1)
    assert summary.oldest_fetched_at is not None
    assert summary.oldest_fetched_at.tzinfo is not None

    # A full sync confirms every remaining record; CAs replaced; cursor None leaves the cursor.
    t2 = T0 + timedelta(hours=1)
    repository.apply(upserts=[], deletes=[], fetched_at=t2, cas=[], confirm_all=True)
    summary = repository.summary()
    assert (summary.oldest_fetched_at, summary.cas, summary.sequence) == (t2, 0, 5)


def test_status_round_trips_without_touching_the_cursor(repository: CacheRepository) -> None:
    repository.apply(upserts=[], deletes=[], fetched_at=T0, sequence=42)
    status = SyncStatus(online=False, online_since=T0, offline_since=T0 + timedelta(hours=1),
                        last_success_at=T0, last_attempt_at=T0 + timedelta(hours=2), last_full_sync_at=T0,
                        last_error="the hub at ... did not answer within 10s")
    repository.save_status(status)
    snapshot = repository.load()
    assert (snapshot.status, snapshot.sequence) == (status, 42)


def test_replace_all_makes_the_tables_exactly_that(repository: CacheRepository) -> None:
    repository.apply(upserts=[device(n) for n in range(10)], deletes=[], fetched_at=T0, sequence=10, cas=[CA])
    repository.replace_all([device(3), device(20)], [], 21, T0)
    snapshot = repository.load()
    assert {d.device_id for d in snapshot.devices} == {"device-000003", "device-000020"}
    assert (snapshot.cas, snapshot.sequence) == ((), 21)
    assert repository.get("device-000020") == device(20)
    assert repository.get("device-000001") is None


def test_naive_datetimes_are_refused(repository: CacheRepository) -> None:
    with pytest.raises(StorageError, match="naive datetime"):
        repository.apply(upserts=[device(1)], deletes=[], fetched_at=datetime(2026, 1, 1))


def test_full_sync_of_100k_devices(repository: CacheRepository) -> None:
    # How long it takes is a figure (`python -m bench.sync_bench`), printed here, never asserted.
    devices = [device(n) for n in range(100_000)]
    started = time.perf_counter()
    repository.apply(upserts=devices, deletes=[], fetched_at=T0, sequence=100_000, cas=[CA], confirm_all=True)
    first = time.perf_counter() - started
    changed = [device(n, enabled=False, generation=100_001 + n) for n in range(0, 100_000, 10)]
    started = time.perf_counter()
    repository.apply(upserts=changed, deletes=[f"device-{n:06d}" for n in range(5, 100_000, 100)],
                     fetched_at=T0, sequence=200_000, confirm_all=True)
    resync = time.perf_counter() - started
    started = time.perf_counter()
    snapshot = repository.load()
    load = time.perf_counter() - started
    print(f"\n{repository.engine.dialect.name}: insert 100k {first:.2f}s, resync 10k changed + 1k removed "
          f"{resync:.2f}s, load {len(snapshot.devices)} {load:.2f}s")
    assert len(snapshot.devices) == 99_000
    by_id = {d.device_id: d for d in snapshot.devices}
    assert "device-000005" not in by_id
    assert "device-000105" not in by_id
    assert by_id["device-000010"].enabled is False
    assert by_id["device-000011"].enabled is True
    assert snapshot.sequence == 200_000

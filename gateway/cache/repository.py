"""The one module that reads and writes the cache tables (SQLAlchemy Core, blocking: run it on a
`DatabaseThread`). Bulk statements throughout: a full sync of 100,000 devices is a few executemany calls."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, insert, select, update

from gateway.cache.records import CacheSnapshot, CacheSummary, RegisteredCA, SyncStatus
from gateway.cache.tables import SYNC_STATE_ID, cache_cas, cache_devices, cache_sync_state
from gateway.db.engine import storage_errors
from gateway.errors import StorageError
from gateway.records import AuthType, DeviceRecord

# Rows per executemany / ids per IN list: well under SQLite's 32,766 bound variables, big enough that
# per-statement overhead vanishes.
WRITE_CHUNK = 5000
DELETE_CHUNK = 500

_DEVICE_COLUMNS = (
    "device_id",
    "enabled",
    "auth_type",
    "parent",
    "primary_thumbprint",
    "secondary_thumbprint",
    "generation",
    "fetched_at",
)
_STATUS_COLUMNS = (
    "online",
    "online_since",
    "offline_since",
    "last_success_at",
    "last_attempt_at",
    "last_full_sync_at",
    "last_error",
)


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _device_row(record: DeviceRecord, fetched_at: datetime) -> dict[str, Any]:
    return {
        "device_id": record.device_id,
        "enabled": record.enabled,
        "auth_type": record.auth_type.value,
        "parent": record.parent,
        "primary_thumbprint": record.primary_thumbprint,
        "secondary_thumbprint": record.secondary_thumbprint,
        "generation": record.generation,
        "fetched_at": fetched_at,
    }


def _record(row: Any) -> DeviceRecord:
    return DeviceRecord(
        device_id=row.device_id,
        enabled=bool(row.enabled),
        auth_type=AuthType(row.auth_type),
        parent=row.parent,
        primary_thumbprint=row.primary_thumbprint,
        secondary_thumbprint=row.secondary_thumbprint,
        generation=int(row.generation),
    )


class CacheRepository:
    """Devices, registered CAs and the sync state of the offline cache."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._where = engine.url

    # -- reads -------------------------------------------------------------------------------------

    def load(self) -> CacheSnapshot:
        """The whole cache, for start-up."""
        with storage_errors("loading the device cache", self._where), self.engine.connect() as conn:
            devices = tuple(_record(row) for row in conn.execute(select(cache_devices)))
            cas = tuple(
                RegisteredCA(row.name, row.pem, row.thumbprint)
                for row in conn.execute(select(cache_cas).order_by(cache_cas.c.name))
            )
            sequence, status = self._read_state(conn)
        return CacheSnapshot(devices, cas, sequence, status)

    def summary(self) -> CacheSummary:
        """Counts and ages, without loading the devices."""
        with storage_errors("reading the device cache", self._where), self.engine.connect() as conn:
            counts = conn.execute(
                select(
                    func.count(),
                    func.count().filter(cache_devices.c.enabled.is_(True)),
                    func.min(cache_devices.c.fetched_at),
                    func.max(cache_devices.c.fetched_at),
                )
            ).one()
            cas = conn.execute(select(func.count()).select_from(cache_cas)).scalar_one()
            sequence, status = self._read_state(conn)
        return CacheSummary(
            devices=int(counts[0]),
            enabled=int(counts[1]),
            oldest_fetched_at=counts[2],  # min()/max() keep the column's type: aware UTC datetimes
            newest_fetched_at=counts[3],
            cas=int(cas),
            sequence=sequence,
            status=status,
        )

    def get(self, device_id: str) -> DeviceRecord | None:
        """One cached device (diagnostics and tests; the gateway serves from memory)."""
        with storage_errors("reading the device cache", self._where), self.engine.connect() as conn:
            row = conn.execute(select(cache_devices).where(cache_devices.c.device_id == device_id)).first()
        return None if row is None else _record(row)

    @staticmethod
    def _read_state(conn: Connection) -> tuple[int | None, SyncStatus]:
        row = conn.execute(select(cache_sync_state).where(cache_sync_state.c.id == SYNC_STATE_ID)).first()
        if row is None:
            return None, SyncStatus()
        status = SyncStatus(**{name: getattr(row, name) for name in _STATUS_COLUMNS})
        return (None if row.sequence is None else int(row.sequence)), status

    # -- writes ------------------------------------------------------------------------------------

    def apply(
        self,
        *,
        upserts: Sequence[DeviceRecord],
        deletes: Sequence[str],
        fetched_at: datetime,
        sequence: int | None = None,
        cas: Sequence[RegisteredCA] | None = None,
        confirm_all: bool = False,
    ) -> None:
        """One transaction: upsert and delete devices, replace the CAs (unless None), move the cursor
        (unless None); `confirm_all` stamps every remaining device with `fetched_at` (a full sync)."""
        with storage_errors("writing the device cache", self._where), self.engine.begin() as conn:
            for ids in _chunks(deletes, DELETE_CHUNK):
                conn.execute(delete(cache_devices).where(cache_devices.c.device_id.in_(ids)))
            self._upsert_devices(conn, [_device_row(record, fetched_at) for record in upserts])
            if confirm_all:
                conn.execute(update(cache_devices).values(fetched_at=fetched_at))
            if cas is not None:
                self._replace_cas(conn, cas)
            if sequence is not None:
                self._write_state(conn, {"sequence": sequence})

    def replace_all(
        self,
        devices: Iterable[DeviceRecord],
        cas: Sequence[RegisteredCA],
        sequence: int | None,
        fetched_at: datetime,
    ) -> None:
        """Make the tables exactly this content (after a write failed and memory ran ahead of them)."""
        rows = [_device_row(record, fetched_at) for record in devices]
        with storage_errors("rewriting the device cache", self._where), self.engine.begin() as conn:
            conn.execute(delete(cache_devices))
            for chunk in _chunks(rows, WRITE_CHUNK):
                conn.execute(insert(cache_devices), chunk)
            self._replace_cas(conn, cas)
            self._write_state(conn, {"sequence": sequence})

    def save_status(self, status: SyncStatus) -> None:
        """Persist how the hub contacts went (the cursor is written by `apply`)."""
        values = {name: getattr(status, name) for name in _STATUS_COLUMNS}
        with storage_errors("writing the sync state", self._where), self.engine.begin() as conn:
            self._write_state(conn, values)

    # -- internals ---------------------------------------------------------------------------------

    @staticmethod
    def _upsert_devices(conn: Connection, rows: list[dict[str, Any]]) -> None:
        # Each dialect's module is imported when used: the engine has loaded its own already, and
        # PostgreSQL's costs a SQLite gateway 2 MiB of resident memory.
        dialect = conn.dialect.name
        if dialect == "sqlite":
            from sqlalchemy.dialects import sqlite

            # sqlite3's executemany of one prepared statement is the fastest path there.
            sqlite_insert = sqlite.insert(cache_devices)
            statement = sqlite_insert.on_conflict_do_update(
                index_elements=["device_id"],
                set_={name: sqlite_insert.excluded[name] for name in _DEVICE_COLUMNS[1:]},
            )
            for chunk in _chunks(rows, WRITE_CHUNK):
                conn.execute(statement, chunk)
        elif dialect == "postgresql":
            from sqlalchemy.dialects import postgresql

            # With RETURNING, SQLAlchemy batches an executemany into multi-row VALUES ("insertmanyvalues");
            # without it psycopg2 sends ON CONFLICT upserts row by row: measured 4x slower.
            pg_insert = postgresql.insert(cache_devices)
            returning = pg_insert.on_conflict_do_update(
                index_elements=["device_id"],
                set_={name: pg_insert.excluded[name] for name in _DEVICE_COLUMNS[1:]},
            ).returning(cache_devices.c.device_id)
            for chunk in _chunks(rows, WRITE_CHUNK):
                conn.execute(returning, chunk).close()
        else:
            # open_engine only hands out SQLite and PostgreSQL engines; anything else is a wiring bug.
            raise StorageError(f"the device cache supports sqlite and postgresql, not {dialect}")

    @staticmethod
    def _replace_cas(conn: Connection, cas: Sequence[RegisteredCA]) -> None:
        conn.execute(delete(cache_cas))
        if cas:
            conn.execute(
                insert(cache_cas), [{"name": ca.name, "pem": ca.pem, "thumbprint": ca.thumbprint} for ca in cas]
            )

    @staticmethod
    def _write_state(conn: Connection, values: dict[str, Any]) -> None:
        done = conn.execute(
            update(cache_sync_state).where(cache_sync_state.c.id == SYNC_STATE_ID).values(**values)
        )
        if done.rowcount == 0:
            conn.execute(insert(cache_sync_state).values(id=SYNC_STATE_ID, **({"online": False} | values)))


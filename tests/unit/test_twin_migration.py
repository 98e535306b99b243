"""Migration 0003_twins_twin_cache creates exactly the twin tables gateway/twin/tables.py defines."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from gateway.db.engine import open_engine, upgrade
from gateway.db.table_modules import load_table_modules
from tests.unit.test_cache_repository import database_url  # noqa: F401 - the SQLite/PostgreSQL fixture


def test_twin_migration_matches_the_table_definitions(database_url: str) -> None:  # noqa: F811
    upgrade(database_url)
    engine = open_engine(database_url)
    metadata = load_table_modules()
    assert {"twin_cache", "twin_reported_queue"} <= set(metadata.tables)
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)
    engine.dispose()
    assert [d for d in diffs if "twin_" in repr(d)] == []

"""Alembic environment, configured in code by `gateway.db.engine.alembic_config` (there is no alembic.ini).

The engine arrives in `config.attributes["engine"]`; `gateway.db.table_modules` imports every table module,
so its `metadata` is complete for autogenerate.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Engine

from gateway.db.table_modules import metadata as target_metadata


def run_migrations_online() -> None:
    engine = context.config.attributes.get("engine")
    if not isinstance(engine, Engine):
        raise RuntimeError("run migrations through gateway.db.engine (edgegate db upgrade), not the alembic CLI")
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            # SQLite cannot ALTER most things: later migrations rebuild tables in batch mode.
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    raise RuntimeError("offline (SQL script) migrations are not supported; run edgegate db upgrade")
run_migrations_online()

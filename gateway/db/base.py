"""The one metadata every gateway table hangs off, so Alembic sees all of them.

Tables are SQLAlchemy Core `Table`s: the gateway never uses the ORM, whose import alone costs about
5 MiB of resident memory.
"""

from __future__ import annotations

from sqlalchemy import MetaData

# Stable constraint names keep migrations identical on SQLite and PostgreSQL.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING)

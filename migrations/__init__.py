"""Alembic migrations of the gateway's database (cache + outbox); run through `gateway.db.engine`."""

"""Alembic migrations of the gateway's database (cache + outbox); run through `gateway.store.db`."""

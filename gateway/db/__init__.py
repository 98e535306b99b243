"""The gateway's own database: one SQLAlchemy metadata, Alembic migrations, engines for SQLite and PostgreSQL."""

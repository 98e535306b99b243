"""The hub's database: one engine, one declarative base for every hub table, and one worker thread.

All database work runs on a single thread, so the event loop never blocks on SQL, SQLite never sees
two writers, and the change sequence is assigned and committed in order (a PostgreSQL sequence shared
by concurrent writers could commit seq 5 before seq 4 and a gateway reading `since=5` would miss 4).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

T = TypeVar("T")


class Base(DeclarativeBase):
    """Declarative base of the hub's tables; `Base.metadata.create_all` makes them (no Alembic here)."""


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL + NORMAL: a committed ingest batch survives a process crash, and batches stay cheap.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def make_engine(url: str) -> Engine:
    """An engine for `url` (SQLite file or PostgreSQL), with SQLite tuned for the single writer."""
    engine = create_engine(url)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


class Database:
    """Runs blocking database calls on the one database thread."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sessions: sessionmaker[Session] = sessionmaker(engine, expire_on_commit=False)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hub-db")

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run `fn(*args, **kwargs)` on the database thread and return its result."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, functools.partial(fn, *args, **kwargs))

    def create_tables(self) -> None:
        Base.metadata.create_all(self.engine)

    def close(self) -> None:
        self._thread.shutdown(wait=True)
        self.engine.dispose()

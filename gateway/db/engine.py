"""Engines for the gateway's database and its Alembic migrations, configured in code (no alembic.ini).

SQLite runs in WAL mode with synchronous=NORMAL: a committed transaction survives a process crash,
and a reader (`edgegate status`) never blocks the writer. PostgreSQL goes through psycopg2.
Every SQLAlchemy failure leaves this module as a chained `StorageError`.

Alembic is imported inside the functions that need it: with Mako and Pygments under it, it costs about
11 MiB of resident memory, and the running gateway migrates in a child process (`gateway.db.migrate`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from gateway.errors import StorageError

if TYPE_CHECKING:
    from alembic.config import Config

T = TypeVar("T")

# Writers wait this long for SQLite's lock instead of failing at once (status readers, the outbox).
SQLITE_BUSY_TIMEOUT_MS = 5000
# `migrations/` sits next to `gateway/` in a checkout, an editable install and a wheel alike.
MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"


def redacted(url: str | URL) -> str:
    """The URL with its password hidden, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparsable database URL>"


@contextmanager
def storage_errors(what: str, url: str | URL) -> Iterator[None]:
    """Translate SQLAlchemy (and file system) failures inside the block into StorageError."""
    try:
        yield
    except SQLAlchemyError as exc:
        raise StorageError(f"{what} failed on {redacted(url)}: {exc.__class__.__name__}: {exc}") from exc
    except OSError as exc:
        raise StorageError(f"{what} failed on {redacted(url)}: {exc}") from exc


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def database_exists(url: str) -> bool:
    """False for a SQLite file that is not there yet (checking must not create it); True otherwise."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise StorageError(f"not a database URL: {exc}") from exc
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return True
    return Path(parsed.database).is_file()


def open_engine(url: str) -> Engine:
    """An engine for a SQLite file (parent directories created) or a PostgreSQL database."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise StorageError(f"not a database URL: {exc}") from exc
    backend = parsed.get_backend_name()
    with storage_errors("opening the database", parsed):
        if backend == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(parsed)
            event.listen(engine, "connect", _sqlite_pragmas)
            return engine
        if backend == "postgresql":
            if parsed.drivername == "postgresql":
                parsed = parsed.set(drivername="postgresql+psycopg2")
            return create_engine(parsed, pool_pre_ping=True)
    raise StorageError(f"unsupported database {backend!r} in {redacted(parsed)}: use sqlite or postgresql")


def alembic_config(engine: Engine | None = None) -> Config:
    """Alembic's configuration in code: the migrations directory, and the engine to run them on."""
    from alembic.config import Config

    if not (MIGRATIONS_DIR / "env.py").is_file():
        raise StorageError(f"the database migrations are missing: no env.py in {MIGRATIONS_DIR}")
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if engine is not None:
        config.attributes["engine"] = engine
    return config


def head_revision() -> str:
    """The newest migration this code knows."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise StorageError(f"no migrations found in {MIGRATIONS_DIR}")
    return head


def upgrade(url: str) -> str:
    """Bring the database at `url` to the newest migration; returns that revision."""
    from alembic import command
    from alembic.util.exc import CommandError

    engine = open_engine(url)
    try:
        with storage_errors("migrating the database", url):
            try:
                command.upgrade(alembic_config(engine), "head")
            except CommandError as exc:
                raise StorageError(f"migrating {redacted(url)} failed: {exc}") from exc
        return head_revision()
    finally:
        engine.dispose()


def current_revision(engine: Engine) -> str | None:
    """The migration the database is at (None: never migrated)."""
    from alembic.runtime.migration import MigrationContext

    with storage_errors("reading the schema version", engine.url), engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def migration_status(url: str) -> tuple[str | None, str]:
    """(current revision or None, head revision) of the database at `url`."""
    engine = open_engine(url)
    try:
        return current_revision(engine), head_revision()
    finally:
        engine.dispose()


class DatabaseThread:
    """Runs blocking database calls on one worker thread, so the event loop never waits on SQL
    and writes of one owner reach the database in the order they were issued.

    A plain thread and queue rather than a ThreadPoolExecutor: the outbox's commits go through here,
    and the executor's concurrent.futures.Future chained to an asyncio one cost more per call than the
    write itself for a small commit (bench/hotpath.py)."""

    def __init__(self, name: str = "edgegate-db") -> None:
        self.name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._lock = threading.Lock()

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)` on the database thread."""
        if self._closed:
            raise RuntimeError(f"{self.name}: cannot run after close")
        if self._thread is None:
            self._start()
        loop = asyncio.get_running_loop()
        done: asyncio.Future[T] = loop.create_future()
        self._jobs.put(_Job(loop, done, functools.partial(fn, *args, **kwargs)))
        return await done

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name=self.name, daemon=True)
                self._thread.start()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            result, error = None, None
            try:
                result = job.call()
            except BaseException as exc:  # handed to the awaiting coroutine, as an executor would
                error = exc
            # A closed loop has nobody waiting any more: keep serving the queue.
            with contextlib.suppress(RuntimeError):
                job.loop.call_soon_threadsafe(_settle, job.done, result, error)

    def close(self) -> None:
        """Finish what was queued, then stop the thread."""
        self._closed = True
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join()


class _Job:
    __slots__ = ("call", "done", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, done: asyncio.Future[Any], call: Callable[[], Any]) -> None:
        self.loop, self.done, self.call = loop, done, call


def _settle(done: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if done.cancelled():
        return
    if exc is not None:
        done.set_exception(exc)
    else:
        done.set_result(result)

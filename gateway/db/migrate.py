"""Bringing the database to the newest migration at start, without Alembic in the gateway process.

Alembic, with Mako and Pygments under it, costs about 11 MiB of resident memory that the long-running
gateway would keep for nothing. So `migrate` first compares the database's revision with the head of
`migrations/versions`, both read with plain SQLAlchemy and `ast`; only when they differ (or either
cannot be read that way) does it run `gateway.db.engine.upgrade` in a short-lived child process, which
answers one line of JSON on stdout, logs to the inherited stderr, and whose StorageError becomes ours.

`edgegate run` begins the migration (`Migration(url)`) before it imports the gateway: on a first start
the child's Alembic run (0.6-0.9 s here) and the parent's imports (about as long) overlap.

    python -m gateway.db.migrate LOG_LEVEL   (the database URL on stdin, never on the command line)
"""

from __future__ import annotations

import ast
import contextlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from gateway.db.engine import MIGRATIONS_DIR, open_engine, redacted, upgrade
from gateway.errors import StorageError

# The child imports the same `gateway` package as this process, wherever it was imported from.
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


def migrate(url: str) -> str:
    """Bring the database at `url` to the newest migration; returns that revision."""
    return Migration(url).result()


class Migration:
    """`migrate(url)` begun at construction and answered by `result()`: a database already at head is
    answered at once; otherwise the child runs meanwhile. `close()` waits for a child nobody asked
    (a start that failed elsewhere), so an upgrade is never left half-run or unreaped."""

    def __init__(self, url: str) -> None:
        self.url = url
        head = script_head()
        self._revision = head if head is not None and database_revision(url) == head else None
        self._child = None if self._revision is not None else upgrade_in_child(url)

    def result(self) -> str:
        """The revision the database is at once migrated (StorageError: the migration failed)."""
        if self._revision is None:
            assert self._child is not None
            self._revision = _answer(self.url, *_finish(self._child))
        return self._revision

    def close(self) -> None:
        if self._child is not None and self._child.returncode is None:
            _finish(self._child)


def script_head(versions: Path = MIGRATIONS_DIR / "versions") -> str | None:
    """The one head of the migration scripts (None: not exactly one, or a script not readable this way)."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in versions.glob("*.py"):
        try:
            constants = _literal_assignments(path)
        except ValueError:  # not a literal: only Alembic can tell
            return None
        revision, down = constants.get("revision"), constants.get("down_revision")
        if not isinstance(revision, str) or "down_revision" not in constants:
            return None
        revisions.add(revision)
        parents.update([down] if isinstance(down, str) else down or ())  # type: ignore[arg-type]
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


def _literal_assignments(path: Path) -> dict[str, object]:
    """`revision` and `down_revision` as assigned at the top level of a migration script (ValueError: not literals)."""
    found: dict[str, object] = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        else:
            continue
        if isinstance(target, ast.Name) and target.id in ("revision", "down_revision"):
            found[target.id] = ast.literal_eval(value)
    return found


def database_revision(url: str) -> str | None:
    """The one revision in the database's alembic_version table (None: none, several, or unreadable)."""
    try:
        engine = open_engine(url)
    except StorageError:
        return None
    try:
        with engine.connect() as connection:
            rows = connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    except SQLAlchemyError:
        return None
    finally:
        engine.dispose()
    return rows[0] if len(rows) == 1 else None


def upgrade_in_child(url: str) -> subprocess.Popen[str]:
    """`upgrade(url)` started in a child process; `Migration.result` reads its answer."""
    level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [_PACKAGE_ROOT, os.environ.get("PYTHONPATH")])))
    try:
        child = subprocess.Popen([sys.executable, "-m", "gateway.db.migrate", level], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, env=env, text=True)
    except OSError as exc:
        raise StorageError(f"migrating {redacted(url)} failed: cannot start the migration process: {exc}") from exc
    assert child.stdin is not None
    with contextlib.suppress(BrokenPipeError):  # a child that died at once: its exit status says so
        child.stdin.write(url)
    with contextlib.suppress(BrokenPipeError):
        child.stdin.close()
    return child


def _finish(child: subprocess.Popen[str]) -> tuple[str, int]:
    """The child's answer (all it wrote to stdout) and its exit status, once it has exited."""
    assert child.stdout is not None
    with child.stdout:
        output = child.stdout.read()
    return output, child.wait()


def _answer(url: str, output: str, status: int) -> str:
    try:
        answer = json.loads(output)
    except ValueError:
        raise StorageError(f"migrating {redacted(url)} failed: the migration process exited with status "
                           f"{status}") from None
    if "error" in answer:
        raise StorageError(answer["error"])
    return str(answer["revision"])


def main() -> int:
    from gateway.logs import configure_logging

    configure_logging(sys.argv[1] if len(sys.argv) > 1 else "WARNING")
    try:
        answer = {"revision": upgrade(sys.stdin.read())}
    except StorageError as exc:
        answer = {"error": str(exc)}
    print(json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(main())

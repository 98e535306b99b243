"""Migrating at start without Alembic in the gateway process (gateway.db.migrate)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.db import migrate as m
from gateway.db.engine import head_revision, migration_status
from gateway.errors import StorageError


def test_script_head_is_alembics_head() -> None:
    assert m.script_head() == head_revision()


def test_unreadable_or_branched_scripts_defer_to_alembic(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text('revision = "a"\ndown_revision = None\n')
    (tmp_path / "b.py").write_text('revision: str = "b"\ndown_revision: str | None = "a"\n')
    assert m.script_head(tmp_path) == "b"
    (tmp_path / "c.py").write_text('revision = "c"\ndown_revision = "a"\n')  # two heads
    assert m.script_head(tmp_path) is None
    (tmp_path / "c.py").write_text('revision = make_id()\ndown_revision = "b"\n')
    assert m.script_head(tmp_path) is None


def test_migrates_in_a_child_only_when_due(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path}/edgegate.db"
    assert m.migrate(url) == head_revision()
    assert migration_status(url) == (head_revision(), head_revision())

    def no_child(_url: str) -> str:
        raise AssertionError("a child was started for a database already at head")

    monkeypatch.setattr(m, "upgrade_in_child", no_child)
    assert m.migrate(url) == head_revision()


def test_child_errors_come_back_as_storage_errors(tmp_path: Path) -> None:
    (tmp_path / "edgegate.db").write_text("not a database")
    with pytest.raises(StorageError, match="migrating the database failed"):
        m.migrate(f"sqlite:///{tmp_path}/edgegate.db")


def test_a_migration_begun_early_is_answered_later(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/edgegate.db"
    migration = m.Migration(url)  # a new database: the child runs while this process goes on
    assert migration._child is not None
    assert migration.result() == head_revision()
    assert migration._child.returncode == 0  # reaped
    assert migration_status(url) == (head_revision(), head_revision())
    assert m.Migration(url)._child is None  # at head: answered without a child


def test_closing_a_migration_nobody_asked_lets_it_finish(tmp_path: Path) -> None:
    """A start that fails elsewhere never leaves an upgrade half-run or its process unreaped."""
    url = f"sqlite:///{tmp_path}/edgegate.db"
    migration = m.Migration(url)
    migration.close()
    assert migration._child is not None
    assert migration._child.returncode == 0
    assert migration_status(url) == (head_revision(), head_revision())


def test_edgegate_run_begins_the_migration_early_only_on_a_state_directory_it_may_touch(tmp_path: Path) -> None:
    from gateway.cli.run import _migrate_early
    from gateway.config import load_config
    from gateway.db.guard import write_note

    state = tmp_path / "state"
    config_path = tmp_path / "edgegate.toml"
    config_path.write_text(f'hostname = "edgegateway.local"\nstate_dir = "{state}"\n')
    config = load_config(config_path)
    early = _migrate_early(config)
    assert early is not None
    assert early.result() == head_revision()
    write_note(state, config.storage.url, state / "outbox")
    (state / "edgegate.db").unlink()  # lost between two starts: the gateway must see that before anything
    assert _migrate_early(config) is None  # creates the database again
    assert not (state / "edgegate.db").exists()


def test_a_failure_while_beginning_early_is_left_to_the_gateways_own_start(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Beginning early is an optimisation: whatever goes wrong there, the start meets again and reports."""
    from gateway.cli import run
    from gateway.config import load_config

    config_path = tmp_path / "edgegate.toml"
    config_path.write_text(f'hostname = "edgegateway.local"\nstate_dir = "{tmp_path / "state"}"\n')
    config = load_config(config_path)

    def unreadable(*_args: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(run, "history_problems", unreadable)
    assert run._migrate_early(config) is None

    def no_process(_url: str) -> None:
        raise StorageError("migrating failed: cannot start the migration process")

    monkeypatch.undo()
    monkeypatch.setattr(m, "upgrade_in_child", no_process)
    assert run._migrate_early(config) is None

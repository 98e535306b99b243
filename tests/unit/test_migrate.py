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

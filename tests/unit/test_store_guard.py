"""The state-directory guards on real directories: what the last start left is compared with what is there."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.db.guard import history_problems, state_dir_problem, write_note


@pytest.fixture
def state(tmp_path: Path) -> tuple[Path, str, Path]:
    state = tmp_path / "state"
    state.mkdir()
    database = state / "edgegate.db"
    database.write_bytes(b"SQLite format 3\0" + b"\0" * 100)
    outbox = state / "outbox"
    outbox.mkdir()
    (outbox / f"{1:020d}.seg").write_bytes(b"x")
    return state, f"sqlite:///{database}", outbox


def test_nothing_to_say_before_the_first_start_or_when_all_is_there(state: tuple[Path, str, Path]) -> None:
    directory, url, outbox = state
    assert history_problems(directory, url, outbox) == []
    write_note(directory, url, outbox)
    assert history_problems(directory, url, outbox) == []


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("delete database", "is now MISSING"),
        ("empty database", "is now EMPTY (zero bytes)"),
        ("delete outbox", "is now gone or EMPTY"),
    ],
)
def test_a_lost_database_or_outbox_is_named(state: tuple[Path, str, Path], damage: str, expected: str) -> None:
    directory, url, outbox = state
    write_note(directory, url, outbox)
    if damage == "delete database":
        (directory / "edgegate.db").unlink()
    elif damage == "empty database":
        (directory / "edgegate.db").write_bytes(b"")
    else:
        for segment in outbox.glob("*.seg"):
            segment.unlink()
    (problem,) = history_problems(directory, url, outbox)
    assert expected in problem


def test_a_postgresql_database_is_not_a_file_to_miss(state: tuple[Path, str, Path]) -> None:
    directory, _, outbox = state
    url = "postgresql://edgegate@db.local/edgegate"
    write_note(directory, url, outbox)
    assert history_problems(directory, url, outbox) == []


def test_a_writable_state_dir_is_created_and_probed(tmp_path: Path) -> None:
    assert state_dir_problem(tmp_path / "new" / "state") is None
    assert (tmp_path / "new" / "state").is_dir()
    assert list((tmp_path / "new" / "state").iterdir()) == []  # the probe is gone


def test_a_file_where_the_state_dir_should_be(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("not a directory")
    problem = state_dir_problem(tmp_path / "state" / "inner")
    assert problem is not None
    assert "cannot create the state directory" in problem

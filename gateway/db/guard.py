"""Start-up guards for the state directory: is it writable, and is what it held last time still there?

`state_dir_problem` is what `edgegate check` reports and what `edgegate run` refuses to start on: a
read-only state directory otherwise fails later, message by message. `history_problems` compares the
state directory with the note the last start left in it (`state.json`): a SQLite database that is
now missing or empty, or an outbox directory that vanished, starts silently empty otherwise -- every
queued message and the device cache gone with no word.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

log = logging.getLogger("edgegate.store")

STATE_NOTE = "state.json"
# The outbox's segment log, under state_dir.
OUTBOX_DIR = "outbox"


def state_dir_problem(path: Path) -> str | None:
    """Why the gateway cannot keep its state in `path` (None: it can). Creates `path` if missing."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot create the state directory {path}: {exc.strerror or exc}"
    probe = path / f".write-probe-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"x")
            os.fsync(fd)
        finally:
            os.close(fd)
        probe.unlink()
    except OSError as exc:
        with contextlib.suppress(OSError):
            probe.unlink(missing_ok=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            # Writable, only full: the gateway must start anyway, or a full disk would wedge it for good.
            log.warning("the state directory %s is full (%s); starting anyway: the outbox refuses new "
                        "messages until space comes back", path, exc.strerror)
            return None
        return (f"the state directory {path} is not writable ({exc.strerror or exc}): the outbox, the device "
                "cache and the certificates live there; make it writable by the gateway's user, or point "
                "state_dir at a writable directory")
    return None


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL (None: not SQLite, or not a file)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    if parsed.database.startswith("file:"):
        return None
    return Path(parsed.database)


def history_problems(state_dir: Path, url: str, outbox_dir: Path) -> list[str]:
    """What the last start left here and is now missing or empty (an empty list: all is as it was)."""
    try:
        note = json.loads((state_dir / STATE_NOTE).read_text())
    except (OSError, ValueError):
        return []
    problems = []
    database = sqlite_file(url)
    if database is not None and note.get("database") == str(database):
        if not database.exists():
            problems.append(f"the database {database} held the device cache and dead letters at the last start "
                            "and is now MISSING: a new, empty one is created")
        elif database.stat().st_size == 0:
            problems.append(f"the database {database} held the device cache and dead letters at the last start "
                            "and is now EMPTY (zero bytes): it starts over, empty")
    had_segments = note.get("outbox") == str(outbox_dir) and note.get("outbox_had_segments")
    if had_segments and (not outbox_dir.is_dir() or not any(outbox_dir.glob("*.seg"))):
        problems.append(f"the outbox {outbox_dir} held segments at the last start and is now gone or EMPTY: "
                        "every message queued then is lost")
    return problems


def write_note(state_dir: Path, url: str, outbox_dir: Path) -> None:
    """Remember what this start found, for the next start's `history_problems` (written once per start)."""
    database = sqlite_file(url)
    note = {"database": str(database) if database is not None else None, "outbox": str(outbox_dir),
            "outbox_had_segments": outbox_dir.is_dir() and any(outbox_dir.glob("*.seg"))}
    tmp = state_dir / (STATE_NOTE + ".tmp")
    try:
        tmp.write_text(json.dumps(note))
        tmp.replace(state_dir / STATE_NOTE)
    except OSError as exc:  # a full disk must not stop a start; the note is only a witness
        log.warning("could not write %s: %s", state_dir / STATE_NOTE, exc)
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)

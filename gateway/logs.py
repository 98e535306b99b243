"""Logging set-up for every command: one line per event, UTC timestamps, no secrets, no forged lines.

Client-supplied strings (client ids, usernames, topics) reach log lines through the front door's
arguments; the formatter escapes control characters in every message, so a client id holding "\\n" or
an ANSI escape cannot start a fake line or repaint the operator's terminal. Three formats:

- text:     `2026-11-22T14:00:00Z INFO edgegate.frontdoor: message`
- json:     one JSON object per line (`ts`, `level`, `logger`, `message`, `exc`)
- journald: chosen automatically when stderr is the journal (JOURNAL_STREAM): `<6>INFO logger: message`,
            no timestamp (the journal adds its own), the syslog priority from the level.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable
from typing import Literal

from gateway.ratelimit import RateLimiter

LogFormat = Literal["text", "json", "journald"]
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

# C0 controls, DEL, C1 controls, and the Unicode line and paragraph separators and bidi overrides,
# which some terminals and log viewers treat as line breaks or reorder.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")

# syslog priorities (sd-daemon(3)) by logging level.
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}

# A peer repeating a rejected attempt gets this many lines per key per interval, then a summary.
REJECTION_BURST = 5
REJECTION_INTERVAL = 10.0


def escape(text: str) -> str:
    """`text` with every control or line-breaking character written as a visible \\xNN / \\uNNNN escape."""
    return _UNSAFE.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}",
                       text)


def priority(levelno: int) -> int:
    """The syslog priority for a logging level (the nearest level at or below it)."""
    for level in sorted(_PRIORITY, reverse=True):
        if levelno >= level:
            return _PRIORITY[level]
    return 7


class SafeFormatter(logging.Formatter):
    """Escapes the message; a traceback stays multi-line (it is ours, not a client's)."""

    converter = time.gmtime  # type: ignore[assignment]  # typeshed narrows the signature

    def __init__(self, style: LogFormat) -> None:
        super().__init__(datefmt="%Y-%m-%dT%H:%M:%S")
        self.style = style

    def format(self, record: logging.LogRecord) -> str:
        message = escape(record.getMessage())
        exc = self.formatException(record.exc_info) if record.exc_info else None
        if self.style == "json":
            entry = {"ts": f"{self.formatTime(record, self.datefmt)}.{int(record.msecs):03d}Z",
                     "level": record.levelname, "logger": record.name, "message": message}
            if exc:
                entry["exc"] = exc
            return json.dumps(entry, ensure_ascii=False)
        if self.style == "journald":
            line = f"<{priority(record.levelno)}>{record.levelname} {record.name}: {message}"
        else:
            line = f"{self.formatTime(record, self.datefmt)}Z {record.levelname} {record.name}: {message}"
        return f"{line}\n{exc}" if exc else line


def _ip(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def _source(record: logging.LogRecord) -> str | None:
    """Where the event came from: an address followed by its port ("from %s:%d"), or one "ip:port" argument.
    A bare address-like string is not enough: a client id can look like one, and must not pick its own key."""
    args = record.args if isinstance(record.args, tuple) else ()
    for index, arg in enumerate(args):
        if not isinstance(arg, str):
            continue
        following = args[index + 1] if index + 1 < len(args) else None
        if isinstance(following, int) and not isinstance(following, bool) and _ip(arg) is not None:
            return _ip(arg)
        host, sep, port = arg.rpartition(":")
        if sep and port.isdigit() and _ip(host.strip("[]")) is not None:
            return _ip(host.strip("[]"))
    return None


class RejectionLimiter(logging.Filter):
    """Per source address and message template, lets REJECTION_BURST warning lines through per
    REJECTION_INTERVAL; `summaries()` turns what it held back into one line per key."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.clock = clock
        self.limiter = RateLimiter(interval=REJECTION_INTERVAL, burst=REJECTION_BURST)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or not record.name.startswith("edgegate.frontdoor"):
            return True
        source = _source(record)
        if source is None:
            return True
        return self.limiter.allow(f"{source} {record.msg}", self.clock())

    def summaries(self) -> list[str]:
        lines = []
        for key, count in sorted(self.limiter.take_summary().items()):
            source, _, template = key.partition(" ")
            lines.append(f"suppressed {count} similar lines from {source} in the last "
                         f"{REJECTION_INTERVAL:g} s: {template.split(' ', 1)[0]} ...")
        return lines


_limiter = RejectionLimiter()


def _alembic_to_debug(record: logging.LogRecord) -> bool:
    """Alembic's INFO lines ("Context impl SQLiteImpl", "Running upgrade ...") are debug detail here."""
    if record.name.startswith("alembic") and record.levelno == logging.INFO:
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
    return True


def under_journald() -> bool:
    """True when stderr is connected to the journal (systemd sets JOURNAL_STREAM=dev:inode)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    dev, _, ino = stream.partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return st.st_dev == int(dev) and st.st_ino == int(ino)


def configure_logging(level: str = "INFO", log_format: str = "text") -> None:
    """Log to stderr in `log_format` ("text" becomes "journald" when stderr is the journal)."""
    style: LogFormat = "json" if log_format == "json" else "journald" if under_journald() else "text"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(SafeFormatter(style))
    handler.addFilter(_alembic_to_debug)
    handler.addFilter(_limiter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # amqtt logs every connection and packet at INFO/DEBUG; the front door already says what matters.
    for noisy in ("amqtt", "transitions"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Alembic says "Context impl SQLiteImpl", "Will assume transactional DDL" and one line per
    # migration at INFO: the gateway's own "database ... at migration ..." line says what matters.
    logging.getLogger("alembic").setLevel(logging.DEBUG if level == "DEBUG" else logging.WARNING)


def set_level(level: str) -> None:
    """Change the level of a running process (SIGHUP)."""
    logging.getLogger().setLevel(level)
    logging.getLogger("alembic").setLevel(logging.DEBUG if level == "DEBUG" else logging.WARNING)


def log_rejection_summaries(logger: logging.Logger) -> None:
    """One line per source whose rejection lines were held back since the last call."""
    for line in _limiter.summaries():
        logger.warning("%s", line)

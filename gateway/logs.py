"""Logging set-up for the gateway process: one line per event, UTC timestamps, no secrets."""

from __future__ import annotations

import logging
import sys
import time


class _UTCFormatter(logging.Formatter):
    converter = time.gmtime  # type: ignore[assignment]  # typeshed narrows the signature


def configure_logging(level: str = "INFO") -> None:
    """Log to stderr as `2026-11-22T14:00:00Z INFO edgegate.frontdoor: message`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_UTCFormatter("%(asctime)sZ %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # amqtt logs every connection and packet at INFO/DEBUG; the front door already says what matters.
    for noisy in ("amqtt", "transitions", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

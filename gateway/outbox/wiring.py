"""Builds the outbox a config asks for (kept here so runtime.py stays a list of parts)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Engine

from gateway.config import Config
from gateway.metrics import Counters
from gateway.outbox.bounds import OutboxLimits
from gateway.outbox.dead_letters import DeadLetters
from gateway.outbox.log import Durability
from gateway.outbox.store import Outbox
from gateway.service.supervisor import Supervisor


def outbox_from_config(config: Config, directory: Path, engine: Engine, counters: Counters,
                       wallclock: Callable[[], float] = time.time, supervisor: Supervisor | None = None) -> Outbox:
    """The outbox in `directory`, with its dead letters (and an older release's table) on `engine`;
    `wallclock` stamps commits and dead letters (the clock watch's trusted epoch in the gateway), and
    `supervisor` runs its writer and sweep (the gateway's own, so status shows them)."""
    ob = config.outbox
    ttl = None if ob.time_to_live is None else ob.time_to_live.total_seconds()
    durability: Durability = "process" if ob.durability == "process" else "fsync"
    return Outbox(directory, OutboxLimits(ttl, ob.max_messages, ob.max_bytes, ob.per_device_max_messages),
                  counters=counters, durability=durability, commit_interval=ob.commit_interval.total_seconds(),
                  disk_reserve=ob.disk_reserve, dead_letters=DeadLetters(engine), legacy=engine, wallclock=wallclock,
                  supervisor=supervisor)

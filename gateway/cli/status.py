"""`edgegate status -c config.toml [--json]`: hub online/offline and since when, last sync and its result,
cache size and age, connected devices and outbox depth.

Reads the database (works while the gateway is stopped) and `state_dir/status.json`, which the running
gateway rewrites every few seconds; a status.json older than STATUS_STALE_AFTER means it is not running.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from gateway.cache.freshness import cache_usable
from gateway.cache.records import CacheSummary
from gateway.cache.repository import CacheRepository
from gateway.config import Config, load_config
from gateway.db.engine import current_revision, database_exists, head_revision, open_engine, redacted
from gateway.errors import StorageError
from gateway.outbox.dead_letters import DeadLetters
from gateway.service.status_file import STATUS_FILE_NAME, read_status

# The gateway writes status.json every few seconds; this much silence means it is not running.
STATUS_STALE_AFTER = timedelta(seconds=60)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("status", help="hub online/offline, last sync, cache, connected devices, outbox")
    parser.add_argument("-c", "--config", type=Path, required=True, help="path to config.toml")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.set_defaults(func=_status)


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value is not None else None


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def build_report(
    *,
    database: str,
    revision: str | None,
    head: str,
    summary: CacheSummary | None,
    live: dict[str, Any] | None,
    now: datetime,
    offline_trust: timedelta | None,
    time_to_live: timedelta | None = None,
    durability: str = "fsync",
    dead_letters: tuple[int, int] | None = None,
    pid_alive: bool | None = None,
) -> dict[str, Any]:
    """The status as one JSON-able dict, from what the database and status.json say (pure). `pid_alive`
    is whether the pid status.json names is a live process (None: not looked at)."""
    written = _parse_time(live.get("written_at")) if live else None
    running = written is not None and now - written <= STATUS_STALE_AFTER and pid_alive is not False
    store = live.get("outbox_store") if running and live else None
    report: dict[str, Any] = {
        "database": {"url": database, "revision": revision, "head": head, "up_to_date": revision == head},
        "gateway": {
            "running": running,
            "pid": live.get("pid") if live else None,
            "status_written_at": _iso(written),
        },
        "service": {
            "pid_alive": pid_alive,
            "healthy": live.get("healthy") if running and live else None,
            "tasks": live.get("tasks") if running and live else None,
            "limits": live.get("limits") if running and live else None,
            "memory": live.get("memory") if running and live else None,
        },
        "connected_devices": live.get("connected_devices") if running and live else None,
        "outbox_depth": live.get("outbox_depth") if running and live else None,
        "devices": live.get("devices") if running and live else None,
        "forwarder": live.get("outbox") if running and live else None,
        "outbox_store": {
            # The configured promise, shown whether or not the gateway runs (README: "as long as it takes").
            "time_to_live_seconds": None if time_to_live is None else time_to_live.total_seconds(),
            "durability": durability,
            "dead_letters": dead_letters[0] if dead_letters else None,
            "requeue_requested": dead_letters[1] if dead_letters else None,
            "live": store if isinstance(store, dict) else None,
        },
        "twins": live.get("twins") if running and live else None,
        "clock": live.get("clock") if running and live else None,
    }
    if running and live and isinstance(live.get("est"), dict):
        report["est"] = live["est"]  # EST-issued certificates: time left, level, next renewal, last error
    if summary is None:
        return report
    status = summary.status
    sync = live.get("sync") if running and live else None
    state = sync.get("state") if isinstance(sync, dict) else None
    report["hub"] = {
        # The running gateway knows best; the database keeps what it last saw.
        "state": state or ("online" if status.online else "offline"),
        "as_of_last_run": state is None,
        "online_since": _iso(status.online_since),
        "offline_since": _iso(status.offline_since),
        "last_success_at": _iso(status.last_success_at),
        "last_attempt_at": _iso(status.last_attempt_at),
        "last_full_sync_at": _iso(status.last_full_sync_at),
        "last_error": status.last_error,
    }
    report["cache"] = {
        "devices": summary.devices,
        "enabled": summary.enabled,
        "registered_cas": summary.cas,
        "sequence": summary.sequence,
        "oldest_entry_at": _iso(summary.oldest_fetched_at),
        "newest_entry_at": _iso(summary.newest_fetched_at),
        "offline_trust_seconds": None if offline_trust is None else offline_trust.total_seconds(),
        "usable": cache_usable(status.last_success_at, now, offline_trust),
    }
    return report


def _ago(value: str | None, now: datetime) -> str:
    when = _parse_time(value)
    if when is None:
        return "never"
    seconds = int((now - when).total_seconds())
    if seconds < 0:
        return f"{value} (in the future: is the clock right?)"
    span = f"{seconds}s" if seconds < 120 else f"{seconds // 60}m" if seconds < 7200 else f"{seconds // 3600}h"
    return f"{value} ({span} ago)"


def render_text(report: dict[str, Any], now: datetime) -> str:
    """The report as aligned lines for a terminal (pure)."""
    db, gw, service = report["database"], report["gateway"], report.get("service", {})
    lines = []
    if gw["running"]:
        lines.append(f"gateway      running (pid {gw['pid']}, status written {_ago(gw['status_written_at'], now)})")
    elif service.get("pid_alive") is False:
        lines.append(f"gateway      not running (pid {gw['pid']} is gone: stale status from "
                     f"{_ago(gw['status_written_at'], now)})")
    else:
        lines.append(f"gateway      not running (last status {_ago(gw['status_written_at'], now)})")
    limits = service.get("limits")
    if isinstance(limits, dict):
        lines.append(f"limits       {limits.get('explanation')}")
    memory = memory_line(service.get("memory"))
    if memory:
        lines.append(f"memory       {memory}")
    for name, task in sorted((service.get("tasks") or {}).items()):
        if task.get("state") != "running":
            lines.append(f"task         {name} {task.get('state')} ({task.get('failures')} failures): "
                         f"{task.get('last_error')}")
    version = "newest" if db["up_to_date"] else f"newest is {db['head']}: run `edgegate db upgrade`"
    lines.append(f"database     {db['url']} at {db['revision'] or 'no schema'} ({version})")
    hub, cache = report.get("hub"), report.get("cache")
    if hub is not None and cache is not None:
        note = " (as of the last run)" if hub["as_of_last_run"] else ""
        since = hub["online_since"] if hub["state"] == "online" else hub["offline_since"]
        if hub["last_attempt_at"] is None:
            lines.append(f"hub          never reached{note}")
        else:
            lines.append(f"hub          {hub['state']}{note} since {_ago(since, now)}")
            result = "ok" if hub["last_error"] is None else f"failed: {hub['last_error']}"
            lines.append(f"last sync    {_ago(hub['last_attempt_at'], now)}: {result}")
        lines.append(f"last success {_ago(hub['last_success_at'], now)}")
        lines.append(f"full sync    {_ago(hub['last_full_sync_at'], now)}")
        trust = cache["offline_trust_seconds"]
        trust_text = "forever" if trust is None else f"{trust:g}s"
        usable = "usable" if cache["usable"] else "TOO OLD: devices are refused until the hub is back"
        lines.append(
            f"cache        {cache['devices']} devices ({cache['enabled']} enabled), "
            f"{cache['registered_cas']} registered CAs, cursor {cache['sequence']}"
        )
        lines.append(f"             oldest entry {_ago(cache['oldest_entry_at'], now)}")
        lines.append(f"             offline trust {trust_text}: {usable}")
    clock = report.get("clock")
    if isinstance(clock, dict):
        mark = "" if clock.get("state") == "trusted" else "⚠ "
        lines.append(f"clock        {mark}{clock.get('state')}: {clock.get('message')}")
    if report["connected_devices"] is not None:
        names = report.get("devices") or []
        shown = ", ".join(names[:20]) + (f", ... ({len(names) - 20} more)" if len(names) > 20 else "")
        lines.append(f"devices      {report['connected_devices']} connected" + (f": {shown}" if names else ""))
    if report["outbox_depth"] is not None:
        forwarder = report.get("forwarder") or {}
        state = forwarder.get("state", "?")
        error = f"; last error: {forwarder['last_error']}" if forwarder.get("last_error") else ""
        lines.append(f"outbox       {report['outbox_depth']} messages waiting, forwarder {state}{error}")
    lines += _est_lines(report.get("est"))
    twins = report.get("twins")
    if twins:
        waiting = twins.get("queued_reported_patches")
        lines.append(f"twins        {twins.get('cached_twins')} cached, {waiting} reported patches waiting for "
                     f"the hub; hub {twins.get('hub')}")
    lines += outbox_lines(report.get("outbox_store"))
    return "\n".join(lines)


def memory_line(memory: Any) -> str | None:
    """What the memory guard reports (gateway.service.memory_guard), as one line (pure); None without a
    measurement."""
    if not isinstance(memory, dict) or memory.get("anonymous_mib") is None:
        return None
    used, limit = memory["anonymous_mib"], memory.get("limit_mib")
    # The guard measures the cgroup v2 that sets the limit where one does, else the process's anonymous memory.
    what = "in use in the cgroup (less its page cache)" if memory.get("measured") == "cgroup" else "anonymous"
    if limit is None:
        return f"{used:.0f} MiB {what}, no limit (no memory guard)"
    pressure, ceiling = str(memory.get("pressure")), memory.get("ceiling")
    doing = {"clear": "clear",
             "refusing": "SHORT: refusing new devices",
             "holding": "SHORT: refusing new devices and holding connected devices' reads"}.get(pressure, pressure)
    text = f"{used:.0f} of {limit:.0f} MiB {what} ({used / limit:.0%}): {doing}"
    if ceiling is not None:
        text += (f"; at most {ceiling} devices admitted (memory held no more at this load: raise the memory "
                 "limit or send smaller readings)")
    return text


def _est_lines(est: Any) -> list[str]:
    """One line per EST-issued certificate: time left, level, next renewal, last error (pure)."""
    if not isinstance(est, dict):
        return []
    lines = []
    for name, label in (("identity", "EST identity"), ("edge_ca", "EST Edge CA ")):
        entry = est.get(name)
        if not isinstance(entry, dict):
            continue
        if "left" not in entry:
            lines.append(f"{label} not enrolled yet")
            continue
        error = entry.get("last_error")
        failed = f"; last error: {error['reason']}: {error['message']}" if isinstance(error, dict) else ""
        lines.append(f"{label} {entry['left']} ({entry['level']}), next renewal {entry['next_renewal']}{failed}")
    return lines


def _clock_from_disk(config: Config, now: datetime) -> dict[str, Any]:
    """The clock as the gateway would judge it now, when no running gateway says (gateway.clock_floor)."""
    from gateway.clock_watch import judge_offline
    from gateway.pki.keeper import held_certificates

    verdict = judge_offline(config.state_dir, held_certificates(config), now, config.auth.clock_skew_tolerance)
    return {"state": verdict.state.value, "message": verdict.sentence, "as_of": "the files on disk"}


# `edgegate status` exit statuses, as LSB init scripts' `status` action: a probe can tell them apart.
EXIT_RUNNING = 0
EXIT_NOT_RUNNING = 3


def pid_alive(pid: object) -> bool | None:
    """Whether `pid` is a live process: a status.json younger than STATUS_STALE_AFTER whose writer was
    killed (kill -9, a crash, an OOM kill) names a pid that is gone."""
    if not isinstance(pid, int) or pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by another user (the service's)
    return True


def outbox_lines(store: dict[str, Any] | None) -> list[str]:
    """Time-to-live, durability, dead letters, disk and refusals of the outbox, as text lines (pure)."""
    if not store:
        return []
    ttl = store.get("time_to_live_seconds")
    kept = "for as long as it takes (time_to_live = \"forever\")" if ttl is None else \
        f"for {ttl:g}s of queued time, then expired (time_to_live)"
    promise = {"fsync": "survives a power cut", "process": "survives a gateway crash, NOT a power cut"}
    durability = store.get("durability", "fsync")
    lines = [f"             messages kept {kept}",
             f"             durability {durability}: {promise.get(durability, '?')}"]
    dead = store.get("dead_letters")
    if dead:
        lines.append(f"dead letters {dead} refused by the hub for good ({store.get('requeue_requested') or 0} "
                     "waiting to be re-queued): `edgegate outbox list`")
    live = store.get("live")
    if isinstance(live, dict):
        lines.append(f"             on disk {live.get('disk_bytes', 0)} bytes in {live.get('segments', 0)} segments, "
                     f"{live.get('free_bytes', 0)} free (reserve {live.get('reserve_bytes', 0)})")
        if live.get("refusing"):
            lines.append(f"             REFUSING NEW MESSAGES: {live['refusing']}")
        for problem in live.get("state_problems") or []:
            lines.append(f"STATE LOST   {problem}")
    return lines


def _status(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    url = config.storage.url
    now = datetime.now(UTC)
    live = read_status(config.state_dir / STATUS_FILE_NAME)
    head = head_revision()
    revision: str | None = None
    summary: CacheSummary | None = None
    dead_letters: tuple[int, int] | None = None
    try:
        if database_exists(url):
            engine = open_engine(url)
            try:
                revision = current_revision(engine)
                if revision is not None:
                    summary = CacheRepository(engine).summary()
                if revision == head:
                    dead_letters = DeadLetters(engine).count()
            finally:
                engine.dispose()
    except StorageError as exc:
        print(f"edgegate: {exc}", file=sys.stderr)
        return 1
    report = build_report(
        database=redacted(url),
        revision=revision,
        head=head,
        summary=summary,
        live=live,
        now=now,
        offline_trust=config.sync.offline_trust,
        time_to_live=config.outbox.time_to_live,
        durability=config.outbox.durability,
        dead_letters=dead_letters,
        pid_alive=pid_alive(live.get("pid")) if live else None,
    )
    if report.get("clock") is None:
        report["clock"] = _clock_from_disk(config, now)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(render_text(report, now))
        if summary is None:
            print(f"no device cache yet: run `edgegate db upgrade -c {args.config}`, then `edgegate run`")
    return EXIT_RUNNING if report["gateway"]["running"] else EXIT_NOT_RUNNING

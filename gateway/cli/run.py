"""`edgegate run -c config.toml`: start the gateway in the foreground until SIGTERM/SIGINT (SIGHUP reloads)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from gateway.config import Config, load_config
from gateway.db.guard import OUTBOX_DIR, history_problems, state_dir_problem
from gateway.db.migrate import Migration
from gateway.errors import StorageError
from gateway.logs import LEVELS, configure_logging

EXIT_START_FAILED = 1


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("run", help="run the gateway (front door, broker, sync, upstream)")
    parser.add_argument("-c", "--config", type=Path, required=True, help="path to config.toml")
    parser.add_argument("--log-level", choices=LEVELS, help="default: [log] level in config.toml, else INFO")
    parser.add_argument("--log-format", choices=["text", "json"],
                        help="default: [log] format, else text (journald's format when stderr is the journal)")
    parser.add_argument("--ready-file", type=Path, help="write the bound ports here as JSON once listening")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    # Parse and validate everything before anything starts: a bad config exits 2 (ConfigError).
    config = load_config(args.config)
    configure_logging(args.log_level or config.log.level, args.log_format or config.log.format)
    migration = _migrate_early(config)
    from gateway.runtime import serve
    from gateway.service.failures import operational_sentence

    try:
        try:
            import uvloop
        except ImportError:
            return asyncio.run(serve(config, ready_file=args.ready_file, migration=migration))
        return uvloop.run(serve(config, ready_file=args.ready_file, migration=migration))
    except OSError as exc:
        print(f"edgegate: {operational_sentence(exc, config)}", file=sys.stderr)
        return EXIT_START_FAILED
    finally:
        if migration is not None:
            migration.close()


def _migrate_early(config: Config) -> Migration | None:
    """The database's migration, begun before the gateway's own imports, which it overlaps on a first start.
    None where the state directory must be looked at first (the gateway refuses it, or reports what it
    lost, and then migrates), or where the check itself fails (the gateway then says why, as before)."""
    state_dir = config.state_dir
    try:
        if state_dir_problem(state_dir) is not None or history_problems(state_dir, config.storage.url,
                                                                        state_dir / OUTBOX_DIR):
            return None
        return Migration(config.storage.url)
    except (OSError, StorageError):  # the gateway meets the same failure in its own start and says why there
        return None

"""`edgegate db upgrade|current -c config.toml`: migrate the gateway's database, or show its version."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gateway.config import load_config
from gateway.db.engine import database_exists, migration_status, redacted, upgrade
from gateway.errors import StorageError


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("db", help="the gateway's database (cache + outbox): migrations")
    verbs = parser.add_subparsers(dest="db_verb", metavar="VERB", required=True)
    up = verbs.add_parser("upgrade", help="create or migrate the database to the newest schema")
    up.add_argument("-c", "--config", type=Path, required=True, help="path to config.toml")
    up.set_defaults(func=_upgrade)
    current = verbs.add_parser("current", help="show the schema version (exit 1 if a migration is pending)")
    current.add_argument("-c", "--config", type=Path, required=True, help="path to config.toml")
    current.set_defaults(func=_current)


def _upgrade(args: argparse.Namespace) -> int:
    url = load_config(args.config).storage.url
    try:
        head = upgrade(url)
    except StorageError as exc:
        print(f"edgegate: {exc}", file=sys.stderr)
        return 1
    print(f"{redacted(url)}: at {head} (newest)")
    return 0


def _current(args: argparse.Namespace) -> int:
    url = load_config(args.config).storage.url
    try:
        if not database_exists(url):
            print(f"{redacted(url)}: no database yet: run `edgegate db upgrade -c {args.config}`")
            return 1
        current, head = migration_status(url)
    except StorageError as exc:
        print(f"edgegate: {exc}", file=sys.stderr)
        return 1
    if current == head:
        print(f"{redacted(url)}: at {current} (newest)")
        return 0
    shown = current or "no schema yet"
    print(f"{redacted(url)}: at {shown}, newest is {head}: run `edgegate db upgrade -c {args.config}`")
    return 1

"""`edgegate run -c config.toml`: start the gateway in the foreground until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from gateway.config import load_config
from gateway.logs import configure_logging


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("run", help="run the gateway (front door, broker, sync, upstream)")
    parser.add_argument("-c", "--config", type=Path, required=True, help="path to config.toml")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--ready-file", type=Path, help="write the bound ports here as JSON once listening")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    # Parse and validate everything before anything starts: a bad config exits 2 (ConfigError).
    config = load_config(args.config)
    configure_logging(args.log_level)
    from gateway.runtime import serve

    try:
        import uvloop
    except ImportError:
        return asyncio.run(serve(config, ready_file=args.ready_file))
    return uvloop.run(serve(config, ready_file=args.ready_file))

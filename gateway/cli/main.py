"""Entry point of the `edgegate` command."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from gateway import __version__
from gateway.errors import ConfigError, EstError, PKIError, StorageError

# Each verb group lives in its own module and adds its sub-commands with `register(subparsers)`.
VERB_MODULES = (
    "gateway.cli.run",
    "gateway.cli.certs",
    "gateway.cli.check",
    "gateway.cli.status",
    "gateway.cli.db",
    "gateway.cli.demo",
    "gateway.cli.outbox",
    "gateway.cli.service",
)

EXIT_CONFIG = 2


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with every verb group registered."""
    parser = argparse.ArgumentParser(
        prog="edgegate",
        description="MQTT gateway broker standing in for Azure IoT Edge's edgeHub.",
    )
    parser.add_argument("--version", action="version", version=f"edgegate {__version__}")
    subparsers = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for name in VERB_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and run the chosen verb; config errors exit 2 before anything starts."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
    except ConfigError as exc:
        print(f"edgegate: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except PKIError as exc:
        # Unusable certificates or keys are configuration problems too: nothing has started.
        print(f"edgegate: certificate error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except StorageError as exc:
        print(f"edgegate: database error: {exc}", file=sys.stderr)
        return 1
    except EstError as exc:
        print(f"edgegate: EST enrollment failed ({exc.reason}): {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())

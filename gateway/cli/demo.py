"""`edgegate demo`: the README's first command (see gateway/demo.py)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("demo", help="run the seed scenario live: PKI, hub-mock, gateway, two TempSensors")
    p.add_argument("--hostname", default="edgegateway.local", help="the gateway hostname devices dial")
    p.add_argument("--dir", type=Path, default=Path(".edgegate-demo"), help="fresh state directory (wiped)")
    p.add_argument("--duration", type=float, default=0.0, help="seconds to run (default: until Ctrl-C)")
    p.add_argument("--offline-drill", action="store_true", help="take the hub down for a while, then back")
    p.add_argument("--drill-after", type=float, default=8.0, help="seconds before the hub goes down")
    p.add_argument("--drill-length", type=float, default=12.0, help="seconds the hub stays down")
    p.add_argument("--interval", type=float, default=0.5, help="seconds between readings per sensor")
    p.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    from gateway.demo import DemoOptions, run

    duration = args.duration
    if args.offline_drill and not duration:
        duration = args.drill_after + args.drill_length + 10
    return run(DemoOptions(args.dir, args.hostname, duration, args.offline_drill, args.drill_after,
                           args.drill_length, args.interval))

"""`edgegate install-service -c /etc/edgegate/config.toml`: put the systemd unit in place, create the
service user, hand it the state dir, and start the service (or `--print` the unit and do nothing)."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from gateway.config import load_config
from gateway.service.unit import DEFAULT_USER, UnitSettings, render

UNIT_PATH = Path("/etc/systemd/system/edgegate.service")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("install-service", help="install and start the systemd unit (Type=notify, watchdog)")
    p.add_argument("-c", "--config", type=Path, required=True, help="the config the service runs with")
    p.add_argument("--user", default=DEFAULT_USER, help="the system user the service runs as (created if missing)")
    p.add_argument("--unit", type=Path, default=UNIT_PATH, help=f"where to write the unit (default {UNIT_PATH})")
    p.add_argument("--print", action="store_true", help="print the unit and change nothing")
    p.add_argument("--no-start", action="store_true", help="write the unit but do not enable or start it")
    p.set_defaults(func=_install)


def _command() -> Path:
    """The `edgegate` script of this installation: beside its Python (a venv, pipx), else on PATH."""
    beside = Path(sys.executable).with_name("edgegate")
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("edgegate")
    return Path(found) if found else beside


def _install(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    unit = render(UnitSettings(_command(), config.source, config.state_dir, args.user))
    if args.print:
        print(unit, end="")
        return 0
    if os.geteuid() != 0:
        print("edgegate: install-service writes to /etc/systemd/system and creates a user: run it with sudo "
              "(or use --print and install the unit yourself)", file=sys.stderr)
        return 1
    steps: list[list[str]] = []
    if subprocess.run(["id", "-u", args.user], capture_output=True, check=False).returncode != 0:
        steps.append(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", args.user])
    for step in steps:
        subprocess.run(step, check=True)
    config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    shutil.chown(config.state_dir, args.user, args.user)
    for path in config.state_dir.rglob("*"):
        shutil.chown(path, args.user, args.user)
    args.unit.write_text(unit)
    print(f"wrote {args.unit} (runs `{_command()} run -c {config.source}` as {args.user})")
    if args.no_start:
        return 0
    subprocess.run(["systemctl", "daemon-reload"], check=True)
    subprocess.run(["systemctl", "enable", "--now", args.unit.stem], check=True)
    print(f"started; see `systemctl status {args.unit.stem}` and `journalctl -u {args.unit.stem}`")
    return 0

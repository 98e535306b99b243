"""How long `edgegate run` takes to listen: on a new state directory (a first start: quickstart PKI,
database created by the migration child) and again on the same one (the database already at head). No
hub, SQLite, the embedded defaults; each time until the `--ready-file` appears.

    python -m bench.startup [--runs 4]
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.targets import REPO


def time_to_ready(directory: Path) -> float:
    ready = directory / "ready.json"
    ready.unlink(missing_ok=True)
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli.main", "run", "-c", str(directory / "edgegate.toml"),
                             "--ready-file", str(ready), "--log-level", "WARNING"], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while not ready.exists():
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise SystemExit(f"edgegate run exited with status {proc.returncode}: {err.strip()}")
            time.sleep(0.005)
        return time.monotonic() - start
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=4)
    args = parser.parse_args()
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="edgegate-startup-") as tmp:
            directory = Path(tmp)
            (directory / "edgegate.toml").write_text(
                f'hostname = "edgegateway.local"\nstate_dir = "{directory / "state"}"\n\n'
                '[listener]\nbind = "127.0.0.1"\nport = 0\n')
            first = time_to_ready(directory)
            again = time_to_ready(directory)
            print(f"first start {first:.2f} s, again {again:.2f} s", flush=True)


if __name__ == "__main__":
    main()

"""Test-side handle on a running chaos proxy process."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path


class ProxyProcess:
    """Starts `tests.chaos.proxy` as a real process and sends it control commands."""

    def __init__(self, target: tuple[str, int], workdir: Path) -> None:
        ready = workdir / f"proxy-{time.monotonic_ns()}.json"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.chaos.proxy", "--target", f"{target[0]}:{target[1]}",
             "--ready-file", str(ready)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            cwd=Path(__file__).resolve().parents[2],
        )
        deadline = time.monotonic() + 10
        while not ready.exists():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError("chaos proxy did not start")
            time.sleep(0.02)
        info = json.loads(ready.read_text())
        self.port: int = info["port"]
        self.control_port: int = info["control_port"]

    def command(self, line: str) -> str:
        with socket.create_connection(("127.0.0.1", self.control_port), timeout=5) as sock:
            sock.sendall(line.encode() + b"\n")
            answer = sock.makefile().readline().strip()
        if not answer.startswith("ok"):
            raise RuntimeError(f"chaos proxy: {answer}")
        return answer

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()

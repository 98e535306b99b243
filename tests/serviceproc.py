"""A real `edgegate run` as a service manager would start it: extra environment (NOTIFY_SOCKET,
WATCHDOG_USEC), a command prefix (prlimit, cgexec-style wrappers), extra command-line arguments."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from tests.gatewayproc import GatewayProcess
from tests.hubproc import REPO, HubProcess


class ServiceGateway(GatewayProcess):
    env: dict[str, str]
    prefix: Sequence[str]
    args: Sequence[str]
    preexec: object = None

    @classmethod
    def launch(cls, directory: Path, hub: HubProcess | None, *, extra: str = "", env: dict[str, str] | None = None,
               prefix: Sequence[str] = (), args: Sequence[str] = ("--log-level", "DEBUG"),
               preexec: object = None) -> ServiceGateway:
        gw = cls(directory, hub)
        gw.env = {**os.environ, **(env or {})}
        gw.prefix, gw.args, gw.preexec = prefix, args, preexec
        directory.mkdir(parents=True, exist_ok=True)
        gw._write_config(extra, 0)
        gw._launch()
        return gw

    def _launch(self) -> None:
        ready = self.directory / "ready.json"
        ready.unlink(missing_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [*self.prefix, sys.executable, "-m", "gateway.cli.main", "run", "-c", str(self.config_path),
             "--ready-file", str(ready), *self.args],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=self.env,
            preexec_fn=self.preexec,  # type: ignore[arg-type]
        )
        deadline = time.monotonic() + 60
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"edgegate run did not start:\n{self.log()[-3000:]}")
            time.sleep(0.05)
        info = json.loads(ready.read_text())
        self.port = int(info["port"])
        self.health = tuple(info["health"]) if info.get("health") else None

    def get(self, path: str) -> tuple[int, bytes]:
        assert self.health is not None
        try:
            with urllib.request.urlopen(f"http://{self.health[0]}:{self.health[1]}{path}", timeout=10) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()


class FakeNotifySocket:
    """What systemd listens on: an AF_UNIX datagram socket collecting every sd_notify message."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                continue
            except OSError:
                return

    def fields(self) -> list[str]:
        return [f for m in list(self.messages) for f in m.split("\n")]

    def wait_for(self, field: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while field not in self.fields():
            if time.monotonic() > deadline:
                raise AssertionError(f"{field} never arrived; got {self.messages[-10:]}")
            time.sleep(0.05)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()

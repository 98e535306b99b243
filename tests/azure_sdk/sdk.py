"""Test-side handle on Microsoft's azure-iot-device SDK, run in its own virtual environment.

The SDK pins paho-mqtt 1.x (the project uses 2.x), so it lives in `.venv-azure` at the repo root,
built here on first use (and reused; CI builds it once per fresh clone). Each device is a
`driver.py` process we talk to with JSON lines.

The SDK always dials port 8883, so the gateway under test must listen on 127.0.0.1:8883:
`port_8883()` holds a machine-wide file lock so two such tests (in this run or another checkout's)
never overlap.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.hubproc import REPO

VENV = REPO / ".venv-azure"
STAMP = VENV / ".installed-stamp"
# The SDK release the tests were written against; 2.x is the judge the issue names.
REQUIREMENT = "azure-iot-device>=2.14,<3"
DRIVER = Path(__file__).with_name("driver.py")
SDK_PORT = 8883
LOCK = Path(os.environ.get("TMPDIR", "/tmp")) / "edgegate-port-8883.lock"


def sdk_python() -> Path:
    """The SDK venv's interpreter, building the venv first if needed (under a lock: one builder)."""
    python = VENV / "bin" / "python"
    if STAMP.exists():
        return python
    with (REPO / ".venv-azure.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not STAMP.exists():
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, timeout=300)
            subprocess.run([str(python), "-m", "pip", "install", "-q", REQUIREMENT], check=True, timeout=900)
            STAMP.touch()
    return python


@contextlib.contextmanager
def port_8883() -> Iterator[int]:
    """Hold port 8883 for one test at a time, machine-wide."""
    with LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield SDK_PORT


class SdkDevice:
    """One SDK client (a driver.py process) connected through the gateway."""

    def __init__(self, hub_hostname: str, device_id: str, cert: Path, key: Path, root: Path,
                 answer: int = 200) -> None:
        self.device_id = device_id
        self.proc = subprocess.Popen(
            [str(sdk_python()), str(DRIVER), hub_hostname, device_id, str(cert), str(key), str(root),
             "--answer", str(answer)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self._lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.events: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()
        connected = self._next_op("connect", 60)
        if "error" in connected:
            raise AssertionError(f"the SDK could not connect: {connected['error']}\n{self.stderr()}")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(json.loads(line))

    def _next_op(self, op: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"the SDK gave no answer to {op} within {timeout}s\n{self.stderr()}")
            try:
                item = self._lines.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                if self.proc.poll() is not None:
                    raise AssertionError(f"the SDK driver exited during {op}:\n{self.stderr()}") from None
                continue
            if "event" in item:
                self.events.append(item)
            elif item.get("op") == op:
                return item

    def command(self, op: str, timeout: float = 30, **args: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.proc.stdin.flush()
        return self._next_op(op, timeout)

    def get_twin(self, timeout: float = 30) -> dict[str, Any]:
        answer = self.command("get_twin", timeout)
        assert "twin" in answer, answer
        return dict(answer["twin"])

    def patch(self, patch: dict[str, Any], timeout: float = 30) -> None:
        answer = self.command("patch", timeout, patch=patch)
        assert answer.get("ok"), answer

    def wait_event(self, kind: str, timeout: float = 20) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events:
                if event["event"] == kind:
                    self.events.remove(event)
                    return event
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {kind} event within {timeout}s\n{self.stderr()}")
            try:
                item = self._lines.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                continue
            if "event" in item:
                self.events.append(item)

    def stderr(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return ""
        return self.proc.stderr.read()[-3000:]

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                assert self.proc.stdin is not None
                self.proc.stdin.write('{"op": "quit"}\n')
                self.proc.stdin.flush()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

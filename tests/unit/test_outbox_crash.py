"""kill -9 in the middle of a stream of QoS 1 messages: every message whose commit was acknowledged is in
the outbox when it is opened again.

The child (this module run as `python -m tests.unit.test_outbox_crash URL`) submits numbered messages
with 256 in flight and prints each number once its future resolved, i.e. when the front door would send
the PUBACK. The parent SIGKILLs it mid-stream, then reopens the database.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.outbox.bounds import OutboxLimits
from gateway.outbox.store import Outbox
from gateway.records import InboundMessage
from gateway.store.db import open_engine, upgrade

REPO = Path(__file__).resolve().parents[2]
IN_FLIGHT = 256
ACKED_BEFORE_KILL = 3000


async def child(url: str) -> None:
    outbox = Outbox(open_engine(url), OutboxLimits())
    await outbox.open()
    window = asyncio.Semaphore(IN_FLIGHT)

    def acked(n: int) -> None:
        window.release()
        os.write(1, f"{n}\n".encode())  # one write per line: a pipe never splits it

    n = 0
    while True:
        await window.acquire()
        device = f"sensor-{n % 3}"
        future = outbox.submit(InboundMessage(device, "telemetry", f"devices/{device}/messages/events/",
                                              str(n).encode(), 1, (), time.time()))
        future.add_done_callback(lambda f, n=n: acked(n) if f.exception() is None else None)
        n += 1


def test_every_acknowledged_message_survives_kill_9(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'gw.db'}"
    upgrade(url)
    proc = subprocess.Popen([sys.executable, "-m", "tests.unit.test_outbox_crash", url], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    acked: list[int] = []
    deadline = time.monotonic() + 30
    try:
        while len(acked) < ACKED_BEFORE_KILL:
            line = proc.stdout.readline()
            if not line:
                pytest.fail(f"child exited early: {proc.wait()} {proc.stderr.read().decode() if proc.stderr else ''}")
            acked.append(int(line))
            assert time.monotonic() < deadline, "child too slow"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
    rest, _ = proc.communicate(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    acked += [int(line) for line in rest.split()]  # printed before the kill, still in the pipe

    async def stored() -> tuple[list[int], dict[str, int]]:
        outbox = Outbox(open_engine(url), OutboxLimits())
        await outbox.open()
        try:
            return [int(m.payload) for m in await outbox.peek(10**7)], outbox.depth()
        finally:
            await outbox.close()

    numbers, depth = asyncio.run(stored())
    assert set(acked) <= set(numbers)
    assert numbers == sorted(numbers)  # arrival order survives too
    assert len(numbers) >= len(acked) >= ACKED_BEFORE_KILL
    assert depth["messages"] == len(numbers)


if __name__ == "__main__":
    asyncio.run(child(sys.argv[1]))

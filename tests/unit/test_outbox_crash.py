"""kill -9 in the middle of a stream of QoS 1 messages: every message whose commit was acknowledged is in
the outbox when it is opened again, with either durability (a crash of the process keeps the page cache:
"process" is enough for this; only a power cut tells the two apart).

The child (this module run as `python -m tests.unit.test_outbox_crash DIR DURABILITY`) submits numbered messages
with 256 in flight and prints each number once its future resolved, i.e. when the front door would send
the PUBACK. The parent SIGKILLs it mid-stream, then reopens the outbox.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Literal

import pytest

from gateway.outbox.bounds import OutboxLimits
from gateway.outbox.store import Outbox
from gateway.records import InboundMessage

REPO = Path(__file__).resolve().parents[2]
IN_FLIGHT = 256
ACKED_BEFORE_KILL = 3000


async def child(directory: str, durability: Literal["fsync", "process"]) -> None:
    outbox = Outbox(Path(directory), OutboxLimits(), durability=durability, commit_interval=0.002)
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


@pytest.mark.parametrize("durability", ["fsync", "process"])
def test_every_acknowledged_message_survives_kill_9(tmp_path: Path, durability: str) -> None:
    directory = tmp_path / "outbox"
    proc = subprocess.Popen([sys.executable, "-m", "tests.unit.test_outbox_crash", str(directory), durability],
                            cwd=REPO,
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

    async def stored() -> tuple[list[tuple[str, int]], dict[str, int]]:
        outbox = Outbox(directory, OutboxLimits())
        await outbox.open()
        try:
            return [(m.device_id, int(m.payload)) for m in await outbox.peek(10**7)], outbox.depth()
        finally:
            await outbox.close()

    rows, depth = asyncio.run(stored())
    numbers = [n for _, n in rows]
    assert set(acked) <= set(numbers)
    for device in ("sensor-0", "sensor-1", "sensor-2"):
        mine = [n for d, n in rows if d == device]
        assert mine == sorted(mine)  # each device's order survives too
    assert len(numbers) >= len(acked) >= ACKED_BEFORE_KILL
    assert depth["messages"] == len(numbers)


if __name__ == "__main__":
    asyncio.run(child(sys.argv[1], "process" if sys.argv[2] == "process" else "fsync"))

"""The forwarder's own CPU per message: a backlog in a real outbox (a temporary directory), drained by the
real Forwarder into an uplink that takes every POST body and sends it nowhere. What is left is the
forwarder's share of the gateway's work: peek (with the reader thread's decode), the JSON body, and
removing what was delivered. The hub's side is bench.hotpath's "the hub mock" line.

With --steady, the forwarder keeps up instead: a device's read of 20 PUBLISHes is committed, then forwarded,
then the next, as with the hub up; the figure then counts the commit too (submit, encode, the writer
thread), and --no-fresh makes every peek read back from disk (as before the outbox kept what it commits).

    python -m bench.forward_micro [--messages 50000] [--runs 3] [--steady [--no-fresh]]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from gateway.outbox import store
from gateway.outbox.bounds import OutboxLimits
from gateway.outbox.store import Outbox
from gateway.records import InboundMessage
from gateway.upstream.forwarder import Forwarder

PAYLOAD = b'{"temperature": 21.5, "humidity": 40, "n": %d}'


class NullUplink:
    """Takes every POST body and sends it nowhere."""

    def __init__(self) -> None:
        self.posts = 0

    async def post_messages(self, body: bytes) -> None:
        self.posts += 1

    async def close(self) -> None:
        return None


async def one_run(messages: int) -> tuple[float, float, int]:
    """(CPU µs per message in all, on the event loop's thread, POSTs) for draining `messages`."""
    with tempfile.TemporaryDirectory(prefix="edgegate-forward-") as tmp:
        box = Outbox(Path(tmp) / "outbox", OutboxLimits(), commit_interval=0)
        await box.open()
        try:
            now = time.time()
            # One socket read's PUBLISHes share an arrival time; here every twentieth message moves it.
            await asyncio.gather(*(box.submit(InboundMessage(
                "dev-00000", "telemetry", "devices/dev-00000/messages/events/", PAYLOAD % n, 1, (),
                now + n // 20 * 0.001)) for n in range(messages)))
            uplink = NullUplink()
            forwarder = Forwarder(box, uplink, linger=0)
            cpu, loop_cpu = time.process_time(), time.thread_time()
            task = asyncio.ensure_future(forwarder.run())
            while box.messages:  # noqa: ASYNC110 -- the outbox signals commits, not removals
                await asyncio.sleep(0.001)
            cpu, loop_cpu = time.process_time() - cpu, time.thread_time() - loop_cpu
            task.cancel()
            return cpu / messages * 1e6, loop_cpu / messages * 1e6, uplink.posts
        finally:
            await box.close()


async def steady_run(messages: int, per_read: int = 20) -> tuple[float, float, int]:
    """(CPU µs per message in all, on the event loop's thread, POSTs) for committing and forwarding
    `messages`, `per_read` at a time, each forwarded before the next arrives."""
    with tempfile.TemporaryDirectory(prefix="edgegate-forward-") as tmp:
        box = Outbox(Path(tmp) / "outbox", OutboxLimits(), commit_interval=0, durability="process")
        await box.open()
        uplink = NullUplink()
        task = asyncio.ensure_future(Forwarder(box, uplink, linger=0).run())
        try:
            cpu, loop_cpu = time.process_time(), time.thread_time()
            for first in range(0, messages, per_read):
                now = time.time()
                taken = box.submit_many([InboundMessage(
                    "dev-00000", "telemetry", "devices/dev-00000/messages/events/", PAYLOAD % n, 1, (), now)
                    for n in range(first, min(first + per_read, messages))])
                assert taken.committed is not None, taken.refusal
                await taken.committed
                while box.messages:  # noqa: ASYNC110 -- the outbox signals commits, not removals
                    await asyncio.sleep(0)
            cpu, loop_cpu = time.process_time() - cpu, time.thread_time() - loop_cpu
            return cpu / messages * 1e6, loop_cpu / messages * 1e6, uplink.posts
        finally:
            task.cancel()
            await box.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steady", action="store_true", help="commit and forward 20 at a time (the hub up)")
    parser.add_argument("--no-fresh", action="store_true", help="with --steady: every peek reads from disk")
    args = parser.parse_args()
    if args.no_fresh:
        store.FRESH_BYTES = 0
    for _ in range(args.runs):
        total, loop, posts = asyncio.run(steady_run(args.messages) if args.steady else one_run(args.messages))
        print(f"{total:.1f} µs CPU per forwarded message ({loop:.1f} on the event loop), {posts} POSTs", flush=True)


if __name__ == "__main__":
    main()

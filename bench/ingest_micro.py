"""CPU per QoS 1 message on the ingest path, in process and without sockets or TLS: the real
`DeviceSession` (framing, authorization, PUBACK order) feeding the real outbox (segment log, group
commit), the way `frontdoor/connection.py` drives them. Reads CPU time, so a busy machine changes
the rate but hardly the µs per message.

    python -m bench.ingest_micro [--messages 50000] [--window 20] [--durability process] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from gateway.auth.decision import AuthPolicy
from gateway.frontdoor import events as ev
from gateway.frontdoor.limits import FrontDoorLimits
from gateway.frontdoor.session import DeviceSession
from gateway.mqtt import codec
from gateway.outbox.bounds import OutboxLimits
from gateway.outbox.store import Outbox
from tests import certmatrix
from tests.unit.test_decision import MATRIX, peer_for

ROW = MATRIX.by_name("thumbprint primary sha256")
TOPIC = f"devices/{ROW.client_id}/messages/events/"
LIMITS = OutboxLimits(max_messages=10_000_000, max_bytes=10 * 1024**3, per_device_max_messages=10_000_000)


def online_session() -> DeviceSession:
    session = DeviceSession(FrontDoorLimits(), 0.0)
    session.handshake_completed(peer_for(ROW), 0.0)
    session.receive_data(codec.encode_connect(client_id=ROW.client_id, clean_session=True, keep_alive=60), 0.0, 0.0)
    while session.next_event() is not None:
        pass
    session.record_found(ROW.records[0], AuthPolicy(certmatrix.GATEWAY_ID, MATRIX.anchors, timedelta(minutes=5)),
                         certmatrix.NOW)
    while session.next_event() is not None:
        pass
    session.broker_ready(0, 0.0)
    while session.next_event() is not None:
        pass
    session.broker_data(codec.encode_connack(0))
    session.data_to_send()
    return session


async def run(messages: int, window: int, durability: str, directory: Path) -> tuple[float, int]:
    """(CPU seconds, commits) for `messages` QoS 1 PUBLISHes, `window` in flight, as a device sends them."""
    outbox = Outbox(directory, LIMITS, durability=durability)  # type: ignore[arg-type]
    await outbox.open()
    session = online_session()
    loop = asyncio.get_running_loop()
    payload = b'{"temperature": 21.5, "humidity": 40, "n": 0000000}'
    half = max(1, window // 2)
    packets = [codec.encode_publish(TOPIC, payload, qos=1, packet_id=n % 65535 + 1) for n in range(messages)]
    acked = 0
    done = asyncio.Event()
    sent = 0

    def committed(ticket: int, fut: asyncio.Future[None]) -> None:
        exc = fut.exception()
        session.commit_finished(ticket, exc is None, str(exc or ""))
        pump()

    def pump() -> None:
        nonlocal acked, sent
        while (event := session.next_event()) is not None:
            if isinstance(event, ev.Submit):
                taken = outbox.submit_many(event.messages)
                assert taken.committed is not None
                assert taken.accepted == len(event.messages)
                taken.committed.add_done_callback(lambda f, t=event.ticket: committed(t, f))
        out = session.data_to_send()
        if out:
            acked += out.count(b"\x40\x02")
            if acked >= messages:
                done.set()
            # The device answers PUBACKs with its next half-window, as mosquitto_pub's window does.
            while sent < messages and sent - acked < window:
                chunk = b"".join(packets[sent:sent + half])
                sent += len(packets[sent:sent + half])
                loop.call_soon(feed, chunk)

    def feed(chunk: bytes) -> None:
        session.receive_data(chunk, loop.time(), time.time())
        pump()

    commits_before = outbox.commits
    cpu = time.process_time()
    first = b"".join(packets[:window])
    sent = window
    feed(first)
    await done.wait()
    cpu = time.process_time() - cpu
    commits = outbox.commits - commits_before
    await outbox.close()
    return cpu, commits


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--window", type=int, default=20)
    parser.add_argument("--durability", default="process", choices=("fsync", "process"))
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgegate-ingest-") as tmp:
        asyncio.run(run(2_000, args.window, args.durability, Path(tmp) / "warm"))
        prof = cProfile.Profile(time.process_time) if args.profile else None
        if prof is not None:
            prof.enable()
        cpu, commits = asyncio.run(run(args.messages, args.window, args.durability, Path(tmp) / "run"))
        if prof is not None:
            prof.disable()
            pstats.Stats(prof).sort_stats("tottime").print_stats(30)
    print(f"{args.messages:,} messages, window {args.window}, {args.durability}: {cpu / args.messages * 1e6:.1f} µs "
          f"CPU per message, {args.messages / max(commits, 1):.1f} messages per commit")


if __name__ == "__main__":
    main()

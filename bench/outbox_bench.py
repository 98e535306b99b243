"""The outbox and forwarder alone: durable ingest rate, disk bytes per message, and backlog drain rate
to a real hub-mock.

    python -m bench.outbox_bench [--messages 50000] [--devices 1,10,100] [--window 20] [--backlog 100000]

Ingest: N simulated QoS 1 publishers (for each N in `--devices`), each with `--window` messages in flight (a
device waits for its PUBACK, i.e. the outbox commit, before the window moves), with durability "fsync" (the
default: an acknowledged message survives a power cut) and "process" (survives a crash of the gateway, not
of the machine); disk bytes are this process's /proc/self/io write_bytes over the run.
Drain: a `--backlog` of messages already in the outbox, forwarded over mutual TLS to a real `hub-mock run`
process; timed until the outbox is empty, then the hub's count is checked.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import uuid
from pathlib import Path

import psutil

from gateway.hub.client import HubClient
from gateway.outbox.bounds import OutboxLimits
from gateway.outbox.log import Durability
from gateway.outbox.store import Outbox
from gateway.pki import self_signed_device_cert
from gateway.records import InboundMessage
from gateway.upstream.forwarder import Forwarder
from tests.hubproc import HubProcess

LIMITS = OutboxLimits(max_messages=10_000_000, max_bytes=10 * 1024**3, per_device_max_messages=10_000_000)


def message(device: str, n: int, payload: bytes) -> InboundMessage:
    return InboundMessage(device, "telemetry", f"devices/{device}/messages/events/", payload, 1,
                          (("n", str(n)),), time.time())


def written() -> int:
    return int(psutil.Process().io_counters().write_bytes)


async def ingest(directory: Path, total: int, devices: int, window: int, payload: bytes,
                 durability: Durability) -> tuple[float, float, float]:
    """(messages per second acknowledged, mean messages per commit, disk bytes per message)."""
    outbox = Outbox(directory, LIMITS, durability=durability)
    await outbox.open()
    per_device = total // devices

    async def device(name: str) -> None:
        in_flight: list[asyncio.Future[None]] = []
        for n in range(per_device):
            in_flight.append(outbox.submit(message(name, n, payload)))
            if len(in_flight) >= window:
                await in_flight.pop(0)
        await asyncio.gather(*in_flight)

    before = written()
    started = time.perf_counter()
    await asyncio.gather(*(device(f"sensor-{d}") for d in range(devices)))
    took = time.perf_counter() - started
    disk = written() - before
    commits = outbox.commits
    await outbox.close()
    count = per_device * devices
    return count / took, count / max(commits, 1), disk / count


async def fill(directory: Path, backlog: int, payload: bytes) -> None:
    outbox = Outbox(directory, LIMITS, durability="process")
    await outbox.open()
    for start in range(0, backlog, 5000):
        await asyncio.gather(*(outbox.submit(message(f"sensor-{n % 100}", n, payload))
                               for n in range(start, min(start + 5000, backlog))))
    await outbox.close()


async def drain(directory: Path, hub: HubProcess, work: Path, backlog: int, payload: bytes) -> float:
    """Messages per second from a full outbox to the hub, until the outbox is empty."""
    gateway_id = f"bench-{uuid.uuid4().hex[:6]}"
    issued = self_signed_device_cert(gateway_id)
    cert = issued.fullchain_pem().write_to_path(work / f"{gateway_id}.pem")
    key = issued.private_key_pem.write_to_path(work / f"{gateway_id}.key", private=True)
    hub.admin.add_gateway(gateway_id, cert_pem=issued.cert_pem.bytes.decode())
    await fill(directory, backlog, payload)
    before = int(hub.admin.messages(limit=1)["total"])

    outbox = Outbox(directory, LIMITS)
    await outbox.open()
    client = HubClient.from_files(url=hub.api_url, hostname=hub.hostname, gateway_id=gateway_id,
                                  trust_bundle_cert=hub.hub_root, identity_cert=cert, identity_pk=key)
    forwarder = Forwarder(outbox, client)
    started = time.perf_counter()
    task = asyncio.get_running_loop().create_task(forwarder.run())
    while True:  # polled: the forwarder has no "drained" event, and 10 ms is noise at this size
        if not outbox.messages:
            break
        await asyncio.sleep(0.01)
    took = time.perf_counter() - started
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await client.close()
    await outbox.close()
    arrived = int(hub.admin.messages(limit=1)["total"]) - before
    if arrived != backlog:
        raise SystemExit(f"the hub holds {arrived} new messages, expected {backlog}")
    return backlog / took


async def main_async(args: argparse.Namespace) -> None:
    payload = os.urandom(args.payload // 2).hex().encode()[: args.payload]
    with tempfile.TemporaryDirectory(prefix="edgegate-outbox-bench-", dir=args.dir) as tmp:
        work = Path(tmp)
        print(f"ingest, {args.messages:,} QoS 1 messages, {args.window} in flight per device, "
              f"{args.payload} B payloads, outbox in {work}:")
        for devices in (int(d) for d in args.devices.split(",")):
            for durability in ("fsync", "process"):
                directory = work / f"ingest-{uuid.uuid4().hex[:6]}"
                rate, per_commit, per_message = await ingest(directory, args.messages, devices, args.window, payload,
                                                             "process" if durability == "process" else "fsync")
                print(f"  {devices:4d} devices  durability={durability:8s} {rate:10,.0f} msg/s   "
                      f"{per_commit:6.1f} per commit   {per_message:6.0f} disk bytes per message")

        print(f"drain, {args.backlog:,} messages to a real hub-mock over mutual TLS, 500 per POST:")
        with HubProcess.start(work / "hub", hostname="hub.local") as hub:
            rate = await drain(work / "drain", hub, work, args.backlog, payload)
            print(f"  segment log {rate:10,.0f} msg/s")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.outbox_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--devices", default="1,10,100", help="publisher counts to run, comma-separated")
    parser.add_argument("--window", type=int, default=20, help="QoS 1 messages in flight per device")
    parser.add_argument("--payload", type=int, default=100, help="payload bytes")
    parser.add_argument("--backlog", type=int, default=100_000)
    parser.add_argument("--dir", type=Path, help="where the outbox goes (default: the temp dir); fsync cost "
                        "depends on this file system")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()

"""The outbox and forwarder alone: durable ingest rate and backlog drain rate to a real hub-mock.

    python -m bench.outbox_bench [--messages 50000] [--devices 1,10,100] [--window 20] [--backlog 100000]

Ingest: N simulated QoS 1 publishers (for each N in `--devices`), each with `--window` messages in flight (a
device waits for its PUBACK, i.e. the outbox commit, before the window moves), on SQLite with synchronous=FULL (the
default: an acknowledged message survives a power cut) and synchronous=NORMAL (survives a crash of the
process, not of the machine), and on PostgreSQL when EDGEGATE_TEST_PG_URL is set.
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
from typing import Literal

from sqlalchemy import text

from gateway.outbox.bounds import OutboxLimits
from gateway.outbox.store import Outbox
from gateway.pki import self_signed_device_cert
from gateway.records import InboundMessage
from gateway.store.db import open_engine, upgrade
from gateway.sync.hubclient import HubClient
from gateway.upstream.forwarder import Forwarder
from tests.hubproc import HubProcess

LIMITS = OutboxLimits(max_messages=10_000_000, max_bytes=10 * 1024**3, per_device_max_messages=10_000_000)


def message(device: str, n: int, payload: bytes) -> InboundMessage:
    return InboundMessage(device, "telemetry", f"devices/{device}/messages/events/", payload, 1,
                          (("n", str(n)),), time.time())


async def ingest(url: str, total: int, devices: int, window: int, payload: bytes,
                 synchronous: Literal["FULL", "NORMAL"] = "FULL") -> tuple[float, float]:
    """(messages per second acknowledged, mean messages per commit)."""
    engine = open_engine(url)
    outbox = Outbox(engine, LIMITS, sqlite_synchronous=synchronous)
    await outbox.open()
    per_device = total // devices

    async def device(name: str) -> None:
        in_flight: list[asyncio.Future[None]] = []
        for n in range(per_device):
            in_flight.append(outbox.submit(message(name, n, payload)))
            if len(in_flight) >= window:
                await in_flight.pop(0)
        await asyncio.gather(*in_flight)

    started = time.perf_counter()
    await asyncio.gather(*(device(f"sensor-{d}") for d in range(devices)))
    took = time.perf_counter() - started
    commits = outbox._committer.commits
    await outbox.close()
    engine.dispose()
    return per_device * devices / took, per_device * devices / max(commits, 1)


async def fill(url: str, backlog: int, payload: bytes) -> None:
    engine = open_engine(url)
    outbox = Outbox(engine, LIMITS, sqlite_synchronous="NORMAL")
    await outbox.open()
    for start in range(0, backlog, 5000):
        await asyncio.gather(*(outbox.submit(message(f"sensor-{n % 100}", n, payload))
                               for n in range(start, min(start + 5000, backlog))))
    await outbox.close()
    engine.dispose()


async def drain(url: str, hub: HubProcess, work: Path, backlog: int, payload: bytes) -> float:
    """Messages per second from a full outbox to the hub, until the outbox is empty."""
    gateway_id = f"bench-{uuid.uuid4().hex[:6]}"
    issued = self_signed_device_cert(gateway_id)
    cert = issued.fullchain_pem().write_to_path(work / f"{gateway_id}.pem")
    key = issued.private_key_pem.write_to_path(work / f"{gateway_id}.key", private=True)
    hub.admin.add_gateway(gateway_id, cert_pem=issued.cert_pem.bytes.decode())
    await fill(url, backlog, payload)
    before = int(hub.admin.messages(limit=1)["total"])

    engine = open_engine(url)
    outbox = Outbox(engine, LIMITS)
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
    engine.dispose()
    arrived = int(hub.admin.messages(limit=1)["total"]) - before
    if arrived != backlog:
        raise SystemExit(f"the hub holds {arrived} new messages, expected {backlog}")
    return backlog / took


def fresh_sqlite(work: Path) -> str:
    url = f"sqlite:///{work / f'outbox-{uuid.uuid4().hex[:6]}.db'}"
    upgrade(url)
    return url


def fresh_postgres(base: str) -> str:
    upgrade(base)
    engine = open_engine(base)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM outbox"))
    engine.dispose()
    return base


async def main_async(args: argparse.Namespace) -> None:
    payload = os.urandom(args.payload // 2).hex().encode()[: args.payload]
    pg = os.environ.get("EDGEGATE_TEST_PG_URL")
    with tempfile.TemporaryDirectory(prefix="edgegate-outbox-bench-", dir=args.dir) as tmp:
        work = Path(tmp)
        print(f"ingest, {args.messages:,} QoS 1 messages, {args.window} in flight per device, "
              f"{args.payload} B payloads, database in {work}:")
        for devices in (int(d) for d in args.devices.split(",")):
            runs: list[tuple[str, str, Literal["FULL", "NORMAL"]]] = [
                ("SQLite WAL synchronous=FULL (default)", fresh_sqlite(work), "FULL"),
                ("SQLite WAL synchronous=NORMAL", fresh_sqlite(work), "NORMAL"),
            ]
            if pg:
                runs.append(("PostgreSQL (synchronous_commit=on)", fresh_postgres(pg), "FULL"))
            for name, url, synchronous in runs:
                rate, per_commit = await ingest(url, args.messages, devices, args.window, payload, synchronous)
                print(f"  {devices:4d} devices  {name:40s} {rate:10,.0f} msg/s   {per_commit:6.1f} per commit")

        print(f"drain, {args.backlog:,} messages to a real hub-mock over mutual TLS, 500 per POST:")
        with HubProcess.start(work / "hub", hostname="hub.local") as hub:
            targets = [("SQLite", fresh_sqlite(work))] + ([("PostgreSQL", fresh_postgres(pg))] if pg else [])
            for name, url in targets:
                rate = await drain(url, hub, work, args.backlog, payload)
                print(f"  {name:40s} {rate:10,.0f} msg/s")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.outbox_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--devices", default="1,10,100", help="publisher counts to run, comma-separated")
    parser.add_argument("--window", type=int, default=20, help="QoS 1 messages in flight per device")
    parser.add_argument("--payload", type=int, default=100, help="payload bytes")
    parser.add_argument("--backlog", type=int, default=100_000)
    parser.add_argument("--dir", type=Path, help="where the SQLite files go (default: the temp dir); fsync cost "
                        "depends on this file system")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()

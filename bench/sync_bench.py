"""Registry sync benchmark (not a test): full sync of a large device scope from a real hub-mock process
over mutual TLS, the same snapshot written straight into the cache repository, and the cost of a delta
(10 / 100 / 1000 changes) at registry sizes of 10k and 100k devices.

    .venv/bin/python -m bench.sync_bench                  # SQLite, sizes 10000 and 100000
    .venv/bin/python -m bench.sync_bench --sizes 10000 --storage-url postgresql+psycopg2://...

The hub's registry is seeded directly in its database while it is stopped (100k admin calls would
take minutes); the changes of a delta go through the admin API, as an operator's would.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import insert

from gateway.cache.directory import DeviceDirectory
from gateway.cache.repository import CacheRepository
from gateway.db.engine import DatabaseThread, open_engine, upgrade
from gateway.hub.client import HubClient
from gateway.hub.registry_sync import RegistrySync, changes_from_page
from gateway.pki import self_signed_device_cert
from gateway.records import DeviceRecord
from hub_mock.config import load_config as load_hub_config
from hub_mock.db import Base as HubBase
from hub_mock.db import make_engine as make_hub_engine
from hub_mock.registry import ChangeRow, DeviceRow
from tests.hubproc import HubProcess

GATEWAY = "bench-gw"
HOSTNAME = "hub.local"
PAGE_SIZE = 5000  # the hub's maximum page
DELTA_SIZES = (10, 100, 1000)


def utcnow() -> datetime:
    return datetime.now(UTC)


def device_id(n: int) -> str:
    return f"sensor-{n:07d}"


def seed_registry(hub: HubProcess, count: int) -> None:
    """Write `count` devices of GATEWAY's scope (and their change-log rows) into the stopped hub's database."""
    engine = make_hub_engine(load_hub_config(hub.config_path).storage_url)
    HubBase.metadata.create_all(engine)
    with engine.begin() as conn:
        first = 1_000_000  # above anything the admin calls so far have used
        conn.execute(
            insert(ChangeRow),
            [
                {"seq": first + n, "kind": "device", "subject": device_id(n), "op": "upsert",
                 "old_parent": None, "new_parent": GATEWAY}
                for n in range(count)
            ],
        )
        conn.execute(
            insert(DeviceRow),
            [
                {"device_id": device_id(n), "status": "enabled", "auth_type": "selfSigned",
                 "primary_thumbprint": f"{n:064x}", "secondary_thumbprint": None, "parent": GATEWAY,
                 "generation": first + n}
                for n in range(count)
            ],
        )
    engine.dispose()


@dataclass
class Rig:
    hub: HubProcess
    client: HubClient
    directory: DeviceDirectory
    repository: CacheRepository
    db: DatabaseThread


async def build_rig(work: Path, size: int, storage_url: str | None) -> Rig:
    hub = await asyncio.to_thread(HubProcess.start, work / "hub", hostname=HOSTNAME)
    identity = self_signed_device_cert(GATEWAY)
    cert = identity.fullchain_pem().write_to_path(work / "gw.pem")
    key = identity.private_key_pem.write_to_path(work / "gw.key", private=True)
    hub.admin.add_gateway(GATEWAY, cert_pem=identity.cert_pem.bytes.decode())
    hub.stop()
    seed_registry(hub, size)
    await asyncio.to_thread(hub.restart)
    url = storage_url or f"sqlite:///{work / 'edgegate.db'}"
    upgrade(url)
    repository = CacheRepository(open_engine(url))
    db = DatabaseThread()
    client = HubClient.from_files(url=hub.api_url, hostname=HOSTNAME, gateway_id=GATEWAY,
                                  trust_bundle_cert=hub.hub_root, identity_cert=cert, identity_pk=key,
                                  request_timeout=60)
    directory = DeviceDirectory(gateway_id=GATEWAY, repository=repository, db=db, clock=utcnow)
    return Rig(hub, client, directory, repository, db)


async def close_rig(rig: Rig) -> None:
    await rig.client.close()
    rig.db.close()
    rig.repository.engine.dispose()
    rig.hub.stop()


async def fetch_scope(client: HubClient) -> tuple[list[DeviceRecord], int]:
    devices: list[DeviceRecord] = []
    after: str | None = None
    first: int | None = None
    while True:
        page = await client.scope_page(after, PAGE_SIZE)
        first = page.sequence if first is None else first
        devices.extend(page.devices)
        if page.next is None:
            return devices, first
        after = page.next


async def bench_size(size: int, storage_url: str | None) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="sync-bench-") as tmp:
        rig = await build_rig(Path(tmp), size, storage_url)
        try:
            dialect = rig.repository.engine.dialect.name
            started = time.perf_counter()
            devices, cursor = await fetch_scope(rig.client)
            fetched = time.perf_counter() - started
            assert len(devices) == size, f"hub returned {len(devices)} of {size}"
            rows.append((f"{size:>7} devices: hub paging only ({PAGE_SIZE}/page, mTLS)", f"{fetched:6.2f} s"))

            started = time.perf_counter()
            await rig.db.run(rig.repository.apply, upserts=devices, deletes=[], fetched_at=utcnow(),
                             sequence=cursor, cas=[], confirm_all=True)
            took = time.perf_counter() - started
            rows.append((f"{size:>7} devices: repository only, empty {dialect}", f"{took:6.2f} s"))
            await rig.db.run(rig.repository.replace_all, [], [], None, utcnow())

            sync = RegistrySync(rig.directory, rig.client, clock=utcnow, page_size=PAGE_SIZE)
            started = time.perf_counter()
            await sync.full_sync()
            rows.append((f"{size:>7} devices: full sync end to end (hub -> memory + {dialect})",
                         f"{time.perf_counter() - started:6.2f} s"))
            assert len(rig.directory) == size

            started = time.perf_counter()
            await sync.full_sync()
            rows.append((f"{size:>7} devices: full resync, nothing changed", f"{time.perf_counter() - started:6.2f} s"))

            started = time.perf_counter()
            snapshot = await rig.db.run(rig.repository.load)
            rows.append((f"{size:>7} devices: load the persisted cache at start-up",
                         f"{time.perf_counter() - started:6.2f} s"))
            assert len(snapshot.devices) == size

            for changes in DELTA_SIZES:
                targets = [device_id(n) for n in range(0, size, size // changes)][:changes]
                for target in targets:  # disable them through the admin API, like an operator
                    await asyncio.to_thread(rig.hub.admin.disable, target)
                since = rig.directory.sequence or 0
                revoked = 0
                fetch_time = apply_time = 0.0
                while True:
                    started = time.perf_counter()
                    page = await rig.client.changes(since, PAGE_SIZE)
                    fetch_time += time.perf_counter() - started
                    started = time.perf_counter()
                    revoked += len(await rig.directory.apply(changes_from_page(page, utcnow())))
                    apply_time += time.perf_counter() - started
                    since = page.sequence
                    if not page.more:
                        break
                assert revoked == changes, (revoked, changes)
                rows.append((f"{size:>7} devices: delta of {changes:>4} changes (fetch + apply)",
                             f"{fetch_time * 1000:6.0f} + {apply_time * 1000:.0f} ms"))
                for target in targets:
                    await asyncio.to_thread(rig.hub.admin.enable, target)
                page = await rig.client.changes(rig.directory.sequence or 0, PAGE_SIZE)
                await rig.directory.apply(changes_from_page(page, utcnow()))
        finally:
            await close_rig(rig)
    return rows


async def run(sizes: list[int], storage_url: str | None) -> None:
    rows: list[tuple[str, str]] = []
    for size in sizes:
        rows += await bench_size(size, storage_url)
        print(f"... {size} done", flush=True)
    width = max(len(name) for name, _ in rows)
    print()
    print(f"{'measurement':<{width}}  time")
    print(f"{'-' * width}  {'-' * 16}")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--storage-url", help="the gateway database (default: a SQLite file in a temp dir)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # one line per revoked device would drown the table
    asyncio.run(run(args.sizes, args.storage_url))


if __name__ == "__main__":
    main()

"""`hub-mock run`: wires the stores, the two HTTP apps and the switchable API port into one process."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from datetime import UTC, datetime
from pathlib import Path

from aiohttp import web

from hub_mock.admin import build_admin_app
from hub_mock.api import build_api_app
from hub_mock.c2d import C2DQueue
from hub_mock.config import ADMIN_HOST, HubConfig
from hub_mock.db import Database, make_engine
from hub_mock.est_server import EstService, add_est_admin_routes, build_est_app, build_est_context
from hub_mock.faults import FaultSwitch
from hub_mock.ingest import MessageStore
from hub_mock.listener import SwitchableListener
from hub_mock.registry import Registry
from hub_mock.services import HubServices
from hub_mock.tls import build_api_context, trust
from hub_mock.twins import TwinStore
from hub_mock.wakeup import Wakeup

log = logging.getLogger("hub_mock.server")

# In-flight calls get this long to finish at shutdown; long polls are cut, gateways retry.
SHUTDOWN_GRACE_SECONDS = 1.0


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _write_ready_file(path: Path, info: dict[str, object]) -> None:
    # Written whole and renamed, so a test polling for the file never reads half of it.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(info))
    os.replace(tmp, path)


async def serve(
    config: HubConfig,
    *,
    api_port: int | None = None,
    admin_port: int | None = None,
    ready_file: Path | None = None,
    est_port: int | None = None,
) -> int:
    """Serve until SIGTERM or SIGINT; 0 after a clean shutdown."""
    db = Database(make_engine(config.storage_url))
    await db.run(db.create_tables)
    registry = Registry(db)
    api_context = build_api_context(config.server_cert, config.server_key, config.gateway_cas)
    trust(api_context, await db.run(registry.trusted_pems))
    listener = SwitchableListener(
        api_context, config.api_host, config.api_port if api_port is None else api_port
    )
    hub = HubServices(
        db=db,
        registry=registry,
        messages=MessageStore(db),
        c2d=C2DQueue(db, registry),
        twins=TwinStore(db, registry),
        wakeup=Wakeup(),
        faults=FaultSwitch(listener),
        api_context=api_context,
        clock=_utc_now,
    )
    api_runner = web.AppRunner(build_api_app(hub), access_log=None, shutdown_timeout=SHUTDOWN_GRACE_SECONDS)
    admin_app = build_admin_app(hub, config.admin_token)
    est: EstService | None = None
    est_runner: web.AppRunner | None = None
    if config.est is not None:
        # EST-issued identities reach the API's TLS layer through the EST CA chain.
        est = EstService(config.est, SwitchableListener(
            build_est_context(config.est, str(config.server_cert), str(config.server_key)), config.api_host,
            config.est.port if est_port is None else est_port), _utc_now)
        trust(api_context, [pem.decode() for pem in (config.est.ca_cert.read_bytes(),)])
        hub.est_ca = est.ca.ca.cert
        add_est_admin_routes(admin_app, est)
        est_runner = web.AppRunner(build_est_app(est), access_log=None, shutdown_timeout=SHUTDOWN_GRACE_SECONDS)
        await est_runner.setup()
    admin_runner = web.AppRunner(admin_app, access_log=None, shutdown_timeout=SHUTDOWN_GRACE_SECONDS)
    await api_runner.setup()
    await admin_runner.setup()
    handler = api_runner.server
    if handler is None:
        raise RuntimeError("aiohttp AppRunner.setup() made no server")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await listener.start(handler)
        await web.TCPSite(
            admin_runner, ADMIN_HOST, config.admin_port if admin_port is None else admin_port
        ).start()
        hub.api_port, hub.admin_port = listener.port, admin_runner.addresses[0][1]
        if est is not None and est_runner is not None and est_runner.server is not None:
            await est.listener.start(est_runner.server)
            hub.est_port = est.listener.port
        info: dict[str, object] = {
            "pid": os.getpid(),
            "api_port": hub.api_port,
            "admin_port": hub.admin_port,
            "api_url": f"https://{config.api_host}:{hub.api_port}",
            "admin_url": f"http://{ADMIN_HOST}:{hub.admin_port}",
            "hostname": config.hostname,
            "hub_root": str(config.hub_root),
        }
        if est is not None:
            info |= {"est_port": hub.est_port, "est_url": f"https://{config.api_host}:{hub.est_port}/.well-known/est"}
        if ready_file is not None:
            _write_ready_file(ready_file, info)
        print(
            f"hub-mock ready: api {info['api_url']} (TLS name {config.hostname}) admin {info['admin_url']}",
            flush=True,
        )
        await stop.wait()
        log.info("shutting down")
    finally:
        await listener.close()
        if est is not None and est_runner is not None:
            await est.listener.close()
            await est_runner.cleanup()
        await api_runner.cleanup()
        await admin_runner.cleanup()
        db.close()
    return 0

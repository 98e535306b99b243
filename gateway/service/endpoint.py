"""The local HTTP endpoint: GET /healthz (200 ready and every supervised task running, else 503, with
JSON saying which) and GET /metrics (Prometheus text format). Off unless `[health] listen` is set."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any, cast

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

# A probe and a scraper or two; more at once are refused at accept, so local clients cannot take the
# descriptors the devices' budget reserves for the hub link and the database.
MAX_CLIENTS = 16

Health = Callable[[], tuple[bool, dict[str, Any]]]


class _Refused(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        cast(asyncio.Transport, transport).abort()
Metrics = Callable[[], Awaitable[bytes]]


class HealthEndpoint:
    def __init__(self, health: Health, metrics: Metrics) -> None:
        self.health, self.metrics = health, metrics
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None
        self.address: tuple[str, int] | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        handlers = self._runner.server
        assert handlers is not None

        def protocol() -> asyncio.BaseProtocol:
            return _Refused() if len(handlers.connections) >= MAX_CLIENTS else handlers()

        self._server = await asyncio.get_running_loop().create_server(protocol, host, port, reuse_address=True,
                                                                      backlog=MAX_CLIENTS)
        bound = self._server.sockets[0].getsockname()
        self.address = (str(bound[0]), int(bound[1]))
        return self.address

    async def _healthz(self, _request: web.Request) -> web.Response:
        ok, body = self.health()
        return web.Response(status=200 if ok else 503, text=json.dumps(body, indent=2) + "\n",
                            content_type="application/json")

    async def _metrics(self, _request: web.Request) -> web.Response:
        body = await self.metrics()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

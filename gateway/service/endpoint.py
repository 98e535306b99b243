"""The local HTTP endpoint: GET /healthz (200 ready and every supervised task running, else 503, with
JSON saying which) and GET /metrics (Prometheus text format). Off unless `[health] listen` is set."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

Health = Callable[[], tuple[bool, dict[str, Any]]]
Metrics = Callable[[], Awaitable[bytes]]


class HealthEndpoint:
    def __init__(self, health: Health, metrics: Metrics) -> None:
        self.health, self.metrics = health, metrics
        self._runner: web.AppRunner | None = None
        self.address: tuple[str, int] | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, reuse_address=True)
        await site.start()
        server = site._server
        assert server is not None
        sockets = getattr(server, "sockets", None) or []
        bound = sockets[0].getsockname()[:2] if sockets else (host, port)
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
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

"""The local HTTP endpoint: GET /healthz (200 ready and every supervised task running, else 503, with
JSON saying which) and GET /metrics (Prometheus text format). Off unless `[health] listen` is set."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST

from gateway.http.client import Answer
from gateway.http.server import HttpServer

# A probe and a scraper or two; more at once are refused at accept, so local clients cannot take the
# descriptors the devices' budget reserves for the hub link and the database.
MAX_CLIENTS = 16

Health = Callable[[], tuple[bool, dict[str, Any]]]
Metrics = Callable[[], Awaitable[bytes]]


class HealthEndpoint:
    def __init__(self, health: Health, metrics: Metrics) -> None:
        self.health, self.metrics = health, metrics
        self._server: HttpServer | None = None
        self.address: tuple[str, int] | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self._server = HttpServer(self._answer, max_clients=MAX_CLIENTS)
        self.address = await self._server.start(host, port)
        return self.address

    async def _answer(self, _method: str, path: str) -> Answer:
        if path == "/healthz":
            ok, body = self.health()
            return Answer(200 if ok else 503, (("content-type", "application/json; charset=utf-8"),),
                          (json.dumps(body, indent=2) + "\n").encode())
        if path == "/metrics":
            return Answer(200, (("content-type", CONTENT_TYPE_LATEST),), await self.metrics())
        return Answer(404, (("content-type", "text/plain; charset=utf-8"),),
                      b"not found: this endpoint serves /healthz and /metrics\n")

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.close()
            self._server = None

"""The gateway-facing port, switchable between serving HTTPS, refusing connections and a blackhole."""

from __future__ import annotations

import asyncio
import enum
import logging
import ssl
from typing import cast

from aiohttp import web

log = logging.getLogger("hub_mock.listener")

# How long in-flight API calls (long polls) get to finish when the port goes down: none, really.
DROP_GRACE_SECONDS = 0.05


class ListenerMode(enum.Enum):
    SERVING = "serving"  # HTTPS API
    DOWN = "down"  # nothing listens: connections are refused
    BLACKHOLE = "blackhole"  # TCP accepted, nothing ever answered


class _HeldConnection(asyncio.Protocol):
    """Blackhole: keep the socket open, read and drop whatever arrives, never answer."""

    def __init__(self, held: set[asyncio.Transport]) -> None:
        self._held = held
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # a TCP server's transports are Transports
        self._held.add(self._transport)

    def data_received(self, data: bytes) -> None:
        return

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._held.discard(self._transport)


class SwitchableListener:
    """Owns the listening socket of the API port; the port number stays the same across switches."""

    def __init__(self, ssl_context: ssl.SSLContext, host: str, port: int) -> None:
        self._handler: web.Server | None = None
        self._ssl = ssl_context
        self._host = host
        self.port = port
        self.mode = ListenerMode.DOWN
        self._server: asyncio.Server | None = None
        self._held: set[asyncio.Transport] = set()

    async def start(self, handler: web.Server) -> None:
        """Serve `handler` (the API app's request handler factory) on the port."""
        self._handler = handler
        await self.switch(ListenerMode.SERVING)

    async def switch(self, mode: ListenerMode) -> None:
        """Stop what runs now (dropping its connections) and start `mode` on the same port."""
        await self._stop()
        loop = asyncio.get_running_loop()
        if mode is ListenerMode.SERVING:
            if self._handler is None:
                raise RuntimeError("SwitchableListener.start() first")
            self._server = await loop.create_server(self._handler, self._host, self.port, ssl=self._ssl)
        elif mode is ListenerMode.BLACKHOLE:
            self._server = await loop.create_server(
                lambda: _HeldConnection(self._held), self._host, self.port
            )
        if self._server is not None and self.port == 0:
            self.port = self._server.sockets[0].getsockname()[1]
        self.mode = mode
        log.info("API port %d: %s", self.port, mode.value)

    async def _stop(self) -> None:
        if self._server is None:
            return
        # Closing the listening socket frees the port at once; the connections go next.
        self._server.close()
        self._server = None
        if self.mode is ListenerMode.SERVING and self._handler is not None:
            await self._handler.shutdown(DROP_GRACE_SECONDS)
        for transport in list(self._held):
            transport.abort()
        self._held.clear()

    async def close(self) -> None:
        await self._stop()
        self.mode = ListenerMode.DOWN

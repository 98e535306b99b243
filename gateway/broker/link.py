"""The byte pipe between one front-door connection and amqtt's external listener."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable

from gateway.broker.amqtt_surface import ReaderAdapter, WriterAdapter

LISTENER_NAME = "devices"


class BrokerReader(ReaderAdapter):
    """What amqtt reads: packets the front door has already framed, authorized and forwarded."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._eof = False
        self._waiter: asyncio.Future[None] | None = None

    def feed(self, data: bytes) -> None:
        self._buffer += data
        self._wake()

    def feed_eof(self) -> None:
        self._eof = True
        self._wake()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def read(self, n: int = -1) -> bytes:
        # amqtt reads exact field lengths (StreamReader.readexactly semantics); b"" means EOF.
        if n < 0:
            while not self._eof:
                await self._wait()
            data, self._buffer = bytes(self._buffer), bytearray()
            return data
        while len(self._buffer) < n:
            if self._eof:
                return b""
            await self._wait()
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        return data

    async def _wait(self) -> None:
        self._waiter = asyncio.get_running_loop().create_future()
        await self._waiter


class BrokerWriter(WriterAdapter):
    """What amqtt writes: whole packets (amqtt writes one packet per call), sent to the device."""

    def __init__(
        self,
        send: Callable[[bytes], None],
        drain: Callable[[], asyncio.Future[None] | None],
        close: Callable[[], None],
        peer: tuple[str, int],
    ) -> None:
        self._send, self._drain, self._close, self._peer = send, drain, close, peer

    def write(self, data: bytes) -> None:
        self._send(data)

    async def drain(self) -> None:
        waiter = self._drain()
        if waiter is not None:
            await waiter

    def get_peer_info(self) -> tuple[str, int] | None:
        return self._peer

    def get_ssl_info(self) -> ssl.SSLObject | None:
        # Identity was decided by the front door; amqtt must not make decisions from TLS state.
        return None

    async def close(self) -> None:
        self._close()

"""A small HTTP/1.1 server for local GET endpoints: a cap on clients at once, a deadline per request.

No access log, no bodies in: a request with one is answered 413 and the connection closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import h11

from gateway.http.client import MAX_HEAD_BYTES, READ_CHUNK, Answer

# How long a client may take to send a whole request, or sit idle between two: a probe or a scraper
# sends at once, and a client that does not must not hold one of the few places for long.
REQUEST_WITHIN = 10.0

log = logging.getLogger("edgegate.http")

Handler = Callable[[str, str], Awaitable[Answer]]  # (method, path) -> answer; HEAD gets the GET answer's head


class HttpServer:
    """Serves `handler` on GET and HEAD; refuses (resets) connections past `max_clients` right at accept."""

    def __init__(self, handler: Handler, *, max_clients: int) -> None:
        self.handler, self.max_clients = handler, max_clients
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.StreamWriter] = set()

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen on host:port (port 0: any free one); the address bound."""
        self._server = await asyncio.start_server(self._serve, host, port, reuse_address=True,
                                                  backlog=self.max_clients)
        bound = self._server.sockets[0].getsockname()
        return str(bound[0]), int(bound[1])

    async def close(self) -> None:
        """Stop listening and drop every client."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._clients):
            writer.transport.abort()
        self._clients.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._clients) >= self.max_clients:
            writer.transport.abort()
            return
        self._clients.add(writer)
        protocol = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        try:
            while await self._one_exchange(protocol, reader, writer):
                protocol.start_next_cycle()
        except (OSError, TimeoutError):  # the client went away or stalled: nobody to answer
            pass
        finally:
            self._clients.discard(writer)
            writer.close()

    async def _one_exchange(self, protocol: h11.Connection, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> bool:
        """Read one request and answer it; whether the connection may carry another."""
        try:
            async with asyncio.timeout(REQUEST_WITHIN):
                received = await _next_request(protocol, reader)
        except h11.RemoteProtocolError as exc:
            with contextlib.suppress(h11.LocalProtocolError):  # too late in the exchange for an answer
                await _send(protocol, writer, "GET", Answer(exc.error_status_hint, (), f"{exc}\n".encode()))
            return False
        if received is None:
            return False
        request, has_body = received
        method, path = request.method.decode("ascii"), request.target.decode("ascii").split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            answer = Answer(405, (("allow", "GET, HEAD"),), b"only GET and HEAD\n")
        elif has_body:
            answer = Answer(413, (), b"this endpoint takes no request body\n")
        else:
            try:
                answer = await self.handler(method, path)
            except Exception:
                log.exception("the HTTP endpoint failed to answer %s %s", method, path[:100])
                answer = Answer(500, (), b"internal error: see the gateway's log\n")
        await _send(protocol, writer, method, answer)
        return protocol.our_state is h11.DONE and protocol.their_state is h11.DONE


async def _next_request(protocol: h11.Connection, reader: asyncio.StreamReader) -> tuple[h11.Request, bool] | None:
    """The next request's head and whether a body follows (left unread: the answer is 413 and the
    connection closed); None when the client closed before a request."""
    request: h11.Request | None = None
    while True:
        event = protocol.next_event()
        if event is h11.NEED_DATA:
            protocol.receive_data(await reader.read(READ_CHUNK))
        elif isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data | h11.EndOfMessage) and request is not None:
            return request, isinstance(event, h11.Data)
        elif isinstance(event, h11.ConnectionClosed):
            return None


async def _send(protocol: h11.Connection, writer: asyncio.StreamWriter, method: str, answer: Answer) -> None:
    headers = [*answer.headers, ("content-length", str(len(answer.body)))]
    if protocol.their_state is h11.SEND_BODY:  # what is left of the request is not read: we close after
        headers.append(("connection", "close"))
    out = [protocol.send(h11.Response(status_code=answer.status, headers=headers))]
    if method != "HEAD" and answer.body:
        out.append(protocol.send(h11.Data(data=answer.body)))
    out.append(protocol.send(h11.EndOfMessage()))
    writer.write(b"".join(chunk for chunk in out if chunk))
    with contextlib.suppress(ConnectionError):
        await writer.drain()

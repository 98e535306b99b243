"""HTTP/1.1 client connections to one origin: a keep-alive pool with a cap, a deadline per request.

Every failure leaves as an HttpError (gateway.errors) chained to what the socket, TLS or h11 raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import h11

from gateway.errors import HttpError, HttpFailure
from gateway.http.failures import classify

# h11's default bound on a response head (status line and headers); our peers send a few hundred bytes.
MAX_HEAD_BYTES = 16 * 1024
# What one read asks the stream for; the body limit is the caller's (max_body).
READ_CHUNK = 64 * 1024
# How long a connection may sit idle and still be reused: aiohttp's default, which the gateway had
# before, well under the hub's (75 s) and common middleboxes' (~60 s) idle timeouts, so that the far end
# rarely closes a connection just as we send on it.
KEEPALIVE_IDLE = 15.0
# How long close() waits for TLS close_notify to go out before it drops the connections.
CLOSE_GRACE = 1.0

Headers = Sequence[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class Origin:
    """Where requests go: scheme, address, the Host header, and the name the server's certificate must carry."""

    scheme: str
    host: str
    port: int
    server_hostname: str

    @classmethod
    def from_url(cls, url: str, server_hostname: str | None = None) -> Origin:
        """The origin of `url`; `server_hostname` overrides the TLS name (the hub's name on another address)."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{url!r} is not an http:// or https:// URL")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return cls(parts.scheme, parts.hostname, port, server_hostname or parts.hostname)

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Answer:
    """A whole HTTP response: status, headers (names in lower case) and body."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        """The first value of header `name` (any case), or None."""
        wanted = name.lower()
        return next((value for key, value in self.headers if key == wanted), None)


class _Connection:
    """One TCP (or TLS) connection and its h11 state; one exchange at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, now: float) -> None:
        self.reader, self.writer = reader, writer
        self.protocol = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES)
        self.idle_since = now
        self.exchanges = 0
        self.heard = False  # any byte of the current answer arrived

    def reusable(self, now: float) -> bool:
        """Idle on both sides, not closed by the peer meanwhile, and not idle for too long."""
        return (self.protocol.our_state is h11.IDLE and self.protocol.their_state is h11.IDLE
                and not self.reader.at_eof() and not self.writer.is_closing()
                and now - self.idle_since < KEEPALIVE_IDLE)

    async def exchange(self, request: h11.Request, body: bytes, max_body: int) -> Answer:
        self.exchanges += 1
        self.heard = False
        events = (request, h11.Data(data=body), h11.EndOfMessage()) if body else (request, h11.EndOfMessage())
        self.writer.write(b"".join(self.protocol.send(event) or b"" for event in events))
        await self.writer.drain()
        head: h11.Response | None = None
        chunks: list[bytes] = []
        size = 0
        ended = False
        while True:
            try:
                event = self.protocol.next_event()
            except h11.RemoteProtocolError as exc:
                if ended:  # h11's word for a body cut short by the peer's close
                    raise HttpError(HttpFailure.CLOSED, "the connection was closed in the middle of an answer") \
                        from exc
                raise
            if event is h11.NEED_DATA:
                data = await self.reader.read(READ_CHUNK)
                if not data and not self.heard:
                    raise HttpError(HttpFailure.CLOSED, "the connection was closed before an answer")
                self.heard, ended = True, not data
                self.protocol.receive_data(data)
            elif isinstance(event, h11.Response):
                head = event
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if size > max_body:
                    raise HttpError(HttpFailure.TOO_LARGE, f"the answer's body is over {max_body} bytes")
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise HttpError(HttpFailure.CLOSED, "the connection was closed in the middle of an answer")
        assert head is not None  # h11 yields the Response before any Data or EndOfMessage
        if self.protocol.our_state is h11.DONE and self.protocol.their_state is h11.DONE:
            self.protocol.start_next_cycle()
        headers = tuple((name.decode("latin-1"), value.decode("latin-1")) for name, value in head.headers)
        return Answer(head.status_code, headers, b"".join(chunks))

    def close(self) -> None:
        self.writer.close()

    async def closed(self) -> None:
        with contextlib.suppress(OSError):  # the peer may reset instead of answering close_notify
            await self.writer.wait_closed()

    def abort(self) -> None:
        self.writer.transport.abort()


class HttpPool:
    """Keep-alive HTTP/1.1 connections to one origin, at most `max_connections` at once.

    Create inside the event loop; `close()` when done, or `retire()` to let requests in flight finish.
    """

    def __init__(self, origin: Origin, *, ssl_context: ssl.SSLContext | None, max_connections: int,
                 connect_timeout: float) -> None:
        self.origin = origin
        self.connect_timeout = connect_timeout
        self._ssl = ssl_context if origin.scheme == "https" else None
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: list[_Connection] = []
        self._busy: set[_Connection] = set()
        self._retired = False

    @property
    def drained(self) -> bool:
        """Retired (or closed) and no request in flight any more."""
        return self._retired and not self._busy

    async def request(self, method: str, target: str, *, headers: Headers = (), body: bytes = b"",
                      within: float, max_body: int, retry_stale: bool) -> Answer:
        """Send one request and read its whole answer within `within` seconds (waiting for a free slot,
        connecting and reading included). `retry_stale`: the request may be sent twice (it is idempotent),
        so a reused connection the server had closed meanwhile is replaced by a fresh one, once."""
        fields = [("Host", self.origin.host_header), *headers]
        if body or method in ("POST", "PUT", "PATCH"):
            fields.append(("Content-Length", str(len(body))))
        request = h11.Request(method=method, target=target, headers=fields)
        try:
            async with asyncio.timeout(within), self._slots:
                connection = self._take_idle()
                if connection is not None:
                    try:
                        return await self._exchange(connection, request, body, max_body)
                    except HttpError as exc:
                        if not (retry_stale and _stale(exc, connection)):
                            raise
                return await self._exchange(await self._connect(), request, body, max_body)
        except TimeoutError as exc:
            raise HttpError(HttpFailure.TIMEOUT, f"no whole answer within {within:g} s") from exc

    def retire(self) -> None:
        """Take no new requests' connections from here on: close the idle ones now, the busy ones when done."""
        self._retired = True
        for connection in self._idle:
            connection.close()
        self._idle.clear()

    async def close(self) -> None:
        """Close every connection; requests in flight fail with HttpFailure.CLOSED."""
        idle = list(self._idle)
        self.retire()
        busy, self._busy = list(self._busy), set()
        for connection in busy:
            connection.abort()
        if idle:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_GRACE):
                    await asyncio.gather(*(connection.closed() for connection in idle))

    def _take_idle(self) -> _Connection | None:
        """The most recently used live idle connection (the least likely to be closed by the peer); the
        dead and the expired are closed on the way, so that none holds a descriptor for long."""
        now = asyncio.get_running_loop().time()
        live = [connection for connection in self._idle if connection.reusable(now)]
        for connection in self._idle:
            if connection not in live:
                connection.close()
        self._idle = live
        return self._idle.pop() if self._idle else None

    async def _connect(self) -> _Connection:
        try:
            async with asyncio.timeout(self.connect_timeout):
                reader, writer = await asyncio.open_connection(self.origin.host, self.origin.port)
                if self._ssl is not None:
                    await _start_tls(writer, self._ssl, self.origin.server_hostname, self.connect_timeout)
        except TimeoutError as exc:  # our deadline, or the kernel's (ETIMEDOUT)
            raise HttpError(HttpFailure.TIMEOUT, f"no connection within {self.connect_timeout:g} s") from exc
        except OSError as exc:  # ssl.SSLError is an OSError too
            raise classify(exc) from exc
        return _Connection(reader, writer, asyncio.get_running_loop().time())

    async def _exchange(self, connection: _Connection, request: h11.Request, body: bytes, max_body: int) -> Answer:
        self._busy.add(connection)
        answer: Answer | None = None
        try:
            answer = await connection.exchange(request, body, max_body)
            return answer
        except (OSError, h11.RemoteProtocolError) as exc:
            raise classify(exc) from exc
        finally:
            self._busy.discard(connection)
            if answer is not None and connection.reusable(asyncio.get_running_loop().time()) and not self._retired:
                connection.idle_since = asyncio.get_running_loop().time()
                self._idle.append(connection)
            elif answer is not None:
                connection.close()
            else:  # failed, timed out or cancelled half-way: the connection's state is unknown
                connection.abort()


async def _start_tls(writer: asyncio.StreamWriter, context: ssl.SSLContext, server_hostname: str,
                     handshake_timeout: float) -> None:
    """Upgrade a connected stream to TLS; if that fails or is cancelled, the socket is closed at once."""
    # Not open_connection(ssl=...): when a deadline cancels uvloop's create_connection after the TCP connect
    # woke it but before it ran again, it closes the socket under its own TLS layer (transport._close(), not
    # through the SSLProtocol); if the hub's handshake answer came in that same loop iteration (a busy loop
    # and a slow hub: a connect storm), the TLS layer then sends its Finished on the closed socket and the
    # loop logs "Fatal error on SSL protocol" with a RuntimeError. In two steps, a cancelled plain connect
    # has no layer above it, and a cancelled start_tls closes through the TLS layer; the abort drops the
    # socket now rather than after the hub's close_notify (or uvloop's 30 s shutdown timeout).
    tcp = writer.transport
    try:
        await writer.start_tls(context, server_hostname=server_hostname, ssl_handshake_timeout=handshake_timeout)
    except BaseException:
        tcp.abort()
        raise


def _stale(exc: HttpError, connection: _Connection) -> bool:
    """The server closed a kept-alive connection while it was idle: it went before any byte of an answer."""
    return connection.exchanges > 1 and not connection.heard and exc.kind in (HttpFailure.CLOSED,
                                                                               HttpFailure.RESET)


async def fetch(url: str, method: str, *, ssl_context: ssl.SSLContext | None, headers: Headers = (),
                body: bytes = b"", within: float, max_body: int) -> Answer:
    """One request on a fresh connection, closed after (for rare calls whose credentials change)."""
    origin = Origin.from_url(url)
    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    pool = HttpPool(origin, ssl_context=ssl_context, max_connections=1, connect_timeout=within)
    try:
        return await pool.request(method, target, headers=headers, body=body, within=within,
                                  max_body=max_body, retry_stale=False)
    finally:
        await pool.close()


"""gateway.http against real local servers on 127.0.0.1: keep-alive reuse, the pool's cap, deadlines, a
server that closes an idle connection, malformed and oversized answers, TLS names, the health server."""

from __future__ import annotations

import asyncio
import errno
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import h11
import pytest

from gateway.errors import HttpError, HttpFailure
from gateway.http.client import Answer, HttpPool, Origin, fetch
from gateway.http.failures import classify
from gateway.http.server import HttpServer
from gateway.pki.ca import CA

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Scripted:
    """A raw TCP server running `script` per connection; counts connections and the most open at once."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.open = 0
        self.most_open = 0
        self.server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            await self.script(reader, writer)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open -= 1
            writer.close()

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=ssl_context)
        port = self.server.sockets[0].getsockname()[1]
        return f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}"


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[[Script], Awaitable[tuple[Scripted, str]]]]:
    servers: list[Scripted] = []

    async def start(script: Script) -> tuple[Scripted, str]:
        server = Scripted(script)
        servers.append(server)
        return server, await server.start()

    yield start
    for server in servers:
        assert server.server is not None
        server.server.close()


def pool_for(url: str, *, max_connections: int = 8, connect_timeout: float = 2.0) -> HttpPool:
    return HttpPool(Origin.from_url(url), ssl_context=None, max_connections=max_connections,
                    connect_timeout=connect_timeout)


async def keep_answering(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while await reader.readuntil(b"\r\n\r\n"):
        writer.write(OK)
        await writer.drain()


async def get(pool: HttpPool, *, within: float = 2.0, retry_stale: bool = True, max_body: int = 1000) -> Answer:
    return await pool.request("GET", "/", within=within, max_body=max_body, retry_stale=retry_stale)


async def until(condition: Callable[[], bool], within: float = 30.0) -> None:
    """Wait for a state of the servers (connections open): a count of loop turns, not a time, gets there."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


# -- the pool ---------------------------------------------------------------------------------------


async def test_sequential_requests_reuse_one_kept_alive_connection(scripted) -> None:
    server, url = await scripted(keep_answering)
    pool = pool_for(url)
    try:
        answers = [await get(pool) for _ in range(5)]
    finally:
        await pool.close()
    assert [(a.status, a.body) for a in answers] == [(200, b"ok")] * 5
    assert server.connections == 1


async def test_concurrent_requests_open_at_most_max_connections() -> None:
    release = asyncio.Event()

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.readuntil(b"\r\n\r\n"):
            await release.wait()
            writer.write(OK)
            await writer.drain()

    server = Scripted(hold)
    pool = pool_for(await server.start(), max_connections=2)
    try:
        requests = [asyncio.ensure_future(get(pool)) for _ in range(6)]
        await until(lambda: server.open == 2)
        # The other four wait for a free slot, not for a connection of their own: connections == 2 below.
        release.set()
        answers = await asyncio.gather(*requests)
    finally:
        await pool.close()
        assert server.server is not None
        server.server.close()
    assert all(a.status == 200 for a in answers)
    assert server.most_open == 2
    assert server.connections == 2


async def test_a_retired_pool_lets_the_request_in_flight_finish_then_closes_its_connections() -> None:
    release = asyncio.Event()

    async def slow_or_fast(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while head := await reader.readuntil(b"\r\n\r\n"):
            if head.startswith(b"GET /slow "):
                await release.wait()
            writer.write(OK)
            await writer.drain()

    server = Scripted(slow_or_fast)
    pool = pool_for(await server.start())
    try:
        long_poll = asyncio.ensure_future(pool.request("GET", "/slow", within=30, max_body=10, retry_stale=True))
        await until(lambda: server.open == 1)  # the long poll holds its connection
        assert (await pool.request("GET", "/fast", within=30, max_body=10, retry_stale=True)).status == 200
        assert server.open == 2
        pool.retire()  # the idle connection is closed now, the long poll's when it is answered
        await until(lambda: server.open == 1)
        assert (pool.drained, long_poll.done()) == (False, False)
        release.set()
        assert (await long_poll).status == 200
        await until(lambda: server.open == 0)
        assert pool.drained
    finally:
        await pool.close()
        assert server.server is not None
        server.server.close()


async def test_no_answer_within_the_deadline_is_a_timeout(scripted) -> None:
    async def silent(reader: asyncio.StreamReader, _writer: asyncio.StreamWriter) -> None:
        await reader.read()

    _server, url = await scripted(silent)
    pool = pool_for(url)
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        with pytest.raises(HttpError) as caught:
            # The server never answers: only the 0.3 s deadline ends the request before the 30 s bound.
            await asyncio.wait_for(get(pool, within=0.3), 30)
    finally:
        await pool.close()
    assert caught.value.kind is HttpFailure.TIMEOUT
    assert loop.time() - started > 0.25


async def test_a_connection_the_server_closed_while_idle_is_not_reused(scripted) -> None:
    async def one_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(OK)  # keep-alive by default, then closed as an idle connection is
        await writer.drain()

    server, url = await scripted(one_answer)
    pool = pool_for(url)
    try:
        assert (await get(pool, retry_stale=False)).status == 200
        await asyncio.sleep(0.2)  # the close arrives while the connection is idle in the pool
        assert (await get(pool, retry_stale=False)).status == 200
    finally:
        await pool.close()
    assert server.connections == 2


@pytest.mark.parametrize("retry_stale", [True, False])
async def test_a_reused_connection_closed_before_any_answer_is_retried_once_when_allowed(scripted,
                                                                                         retry_stale: bool) -> None:
    """The race a liveness check cannot see: the close comes just as the request goes out."""
    async def closes_on_second(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(OK)
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")  # the second request is read, then dropped unanswered

    server, url = await scripted(closes_on_second)
    pool = pool_for(url)
    try:
        assert (await get(pool)).status == 200
        if retry_stale:
            assert (await get(pool, retry_stale=True)).status == 200
            assert server.connections == 2
        else:
            with pytest.raises(HttpError) as caught:
                await get(pool, retry_stale=False)
            assert caught.value.kind is HttpFailure.CLOSED
            assert server.connections == 1
    finally:
        await pool.close()


async def test_a_fresh_connection_closed_before_an_answer_is_not_retried(scripted) -> None:
    async def drop(reader: asyncio.StreamReader, _writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")

    server, url = await scripted(drop)
    pool = pool_for(url)
    try:
        with pytest.raises(HttpError, match="closed before an answer") as caught:
            await get(pool)
    finally:
        await pool.close()
    assert caught.value.kind is HttpFailure.CLOSED
    assert server.connections == 1


@pytest.mark.parametrize(("reply", "kind"), [
    (b"SMTP ready\r\n\r\n", HttpFailure.MALFORMED),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok", HttpFailure.MALFORMED),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", HttpFailure.CLOSED),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n" + b"x" * 2000, HttpFailure.TOO_LARGE),
    (b"HTTP/1.1 200 OK\r\nX: " + b"y" * 20000, HttpFailure.MALFORMED),  # an unfinished head over MAX_HEAD_BYTES
])
async def test_malformed_cut_short_and_oversized_answers(scripted, reply: bytes, kind: HttpFailure) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(reply)
        await writer.drain()
        if kind is HttpFailure.MALFORMED:
            await reader.read()  # stays open: the client must give up on the bytes alone

    _server, url = await scripted(answer)
    pool = pool_for(url)
    try:
        with pytest.raises(HttpError) as caught:
            await get(pool, max_body=1000)
    finally:
        await pool.close()
    assert caught.value.kind is kind


async def test_chunked_answers_and_post_bodies_go_through(scripted) -> None:
    seen: list[bytes] = []

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(next(ln for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length:"))[15:])
        seen.append(head)
        body = await reader.readexactly(length)
        writer.write(b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\nDate: x\r\n\r\n"
                     + f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n")
        await writer.drain()

    _server, url = await scripted(echo)
    pool = pool_for(url)
    try:
        answer = await pool.request("POST", "/p?q=1", headers=[("Content-Type", "application/json")],
                                    body=b'{"a": 1}', within=2, max_body=100, retry_stale=False)
    finally:
        await pool.close()
    assert (answer.status, answer.body, answer.header("DATE")) == (201, b'{"a": 1}', "x")
    assert seen[0].startswith(b"POST /p?q=1 HTTP/1.1\r\n")
    assert f"host: 127.0.0.1:{url.rsplit(':', 1)[1]}".encode() in seen[0].lower()


async def test_nothing_listening_is_refused() -> None:
    with pytest.raises(HttpError) as caught:
        await fetch("http://127.0.0.1:9/", "GET", ssl_context=None, within=2, max_body=10)
    assert caught.value.kind is HttpFailure.REFUSED


# -- TLS: the name checked is server_hostname, not the URL's host ------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ssl.SSLContext]:
    where = tmp_path_factory.mktemp("pki")
    root = CA.create_root("http test root")
    server = root.issue_server_cert("hub.test.local")
    cert = server.fullchain_pem().write_to_path(where / "server.pem")
    key = server.private_key_pem.write_to_path(where / "server.key")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert), str(key))
    return root.cert_pem.write_to_path(where / "root.pem"), context


@pytest.mark.parametrize(("name", "trusted"), [("hub.test.local", True), ("other.test.local", False)])
async def test_tls_verifies_the_server_hostname_given(pki: tuple[Path, ssl.SSLContext], name: str,
                                                      trusted: bool) -> None:
    root, server_context = pki
    server = Scripted(keep_answering)
    url = await server.start(server_context)
    client_context = ssl.create_default_context(cafile=str(root))
    pool = HttpPool(Origin.from_url(url, name), ssl_context=client_context, max_connections=1, connect_timeout=2)
    try:
        if trusted:
            assert (await get(pool)).status == 200
            assert (await get(pool)).status == 200
            assert server.connections == 1
        else:
            with pytest.raises(HttpError, match="Hostname mismatch") as caught:
                await get(pool)
            assert caught.value.kind is HttpFailure.UNTRUSTED
    finally:
        await pool.close()
        assert server.server is not None
        server.server.close()


# -- the pure mappings ------------------------------------------------------------------------------


def _verify_error() -> ssl.SSLCertVerificationError:
    exc = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    exc.verify_message = "unable to get local issuer certificate"
    return exc


@pytest.mark.parametrize(("exc", "kind"), [
    (_verify_error(), HttpFailure.UNTRUSTED),
    (ssl.SSLError(1, "[SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] tlsv13 alert certificate required"), HttpFailure.TLS),
    (ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed"), HttpFailure.REFUSED),
    (ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"), HttpFailure.RESET),
    (OSError(errno.ECONNRESET, "reset"), HttpFailure.RESET),
    (BrokenPipeError(errno.EPIPE, "Broken pipe"), HttpFailure.CLOSED),
    (h11.RemoteProtocolError("illegal status line"), HttpFailure.MALFORMED),
    (OSError(errno.ENETUNREACH, "Network is unreachable"), HttpFailure.UNREACHABLE),
])
def test_classify(exc: BaseException, kind: HttpFailure) -> None:
    assert classify(exc).kind is kind


# -- the server -------------------------------------------------------------------------------------


async def _answer(method: str, path: str) -> Answer:
    if path == "/boom":
        raise RuntimeError("boom")
    return Answer(200 if path == "/ok" else 404, (("content-type", "text/plain"),), f"{method} {path}\n".encode())


@pytest.fixture
async def served() -> AsyncIterator[tuple[str, int]]:
    server = HttpServer(_answer, max_clients=2)
    address = await server.start("127.0.0.1", 0)
    yield address
    await server.close()


async def _raw(address: tuple[str, int], request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(*address)
    writer.write(request)
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return data


async def test_server_answers_get_head_and_keeps_alive(served: tuple[str, int]) -> None:
    pool = pool_for(f"http://{served[0]}:{served[1]}")
    try:
        answers = [await pool.request(m, p, within=2, max_body=100, retry_stale=False)
                   for m, p in (("GET", "/ok"), ("HEAD", "/ok"), ("GET", "/nope?x=1"), ("GET", "/boom"))]
    finally:
        await pool.close()
    assert [(a.status, a.body) for a in answers] == [(200, b"GET /ok\n"), (200, b""), (404, b"GET /nope\n"),
                                                       (500, b"internal error: see the gateway's log\n")]


@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"GARBAGE\r\n\r\n", b"400"),
    (b"POST /ok HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc", b"405"),
    (b"GET /ok HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc", b"413"),
])
async def test_server_refuses_bad_requests_and_closes(served: tuple[str, int], request_bytes: bytes,
                                                      status: bytes) -> None:
    reply = await _raw(served, request_bytes)
    assert reply.startswith(b"HTTP/1.1 " + status)


async def test_server_resets_clients_past_max_clients(served: tuple[str, int]) -> None:
    held = [await asyncio.open_connection(*served) for _ in range(2)]
    await asyncio.sleep(0.1)
    reader, writer = await asyncio.open_connection(*served)
    writer.write(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
    try:
        refused = await asyncio.wait_for(reader.read(), 5)
    except ConnectionResetError:
        refused = b""
    assert refused == b""  # no answer: reset (or closed) at accept
    for _reader, held_writer in held:
        held_writer.close()
    await asyncio.sleep(0.1)
    assert (await _raw(served, b"GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")).startswith(
        b"HTTP/1.1 200")

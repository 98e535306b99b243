"""gateway.http on uvloop, the gateway's loop (gateway/cli/run.py), when a deadline meets a TLS handshake.

In a connect storm the gateway's loop is busy and the hub answers late, so a request's deadline can land
in the one loop iteration between "TCP connected" and "the connecting task runs again", while the hub's
TLS answer arrives in the same iteration. The pool must report that as its ordinary timeout: no traceback
in the log, no descriptor left open.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import stat
import time
from pathlib import Path
from typing import Any

import pytest
import uvloop

from gateway.errors import HttpError, HttpFailure
from gateway.http.client import HttpPool, Origin
from gateway.pki.ca import CA

HUB_NAME = "hub.test.local"
CONNECT_TIMEOUT = 0.3
# What each iteration of the busy loop spends on other work; more than the 1 ms tick, so every iteration
# has its tick (libuv counts time in milliseconds).
BUSY = 0.002
TICK = 0.001


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ssl.SSLContext]:
    where = tmp_path_factory.mktemp("pki")
    root = CA.create_root("tls deadline test root")
    server = root.issue_server_cert(HUB_NAME)
    cert = server.fullchain_pem().write_to_path(where / "server.pem")
    key = server.private_key_pem.write_to_path(where / "server.key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert), str(key))
    return root.cert_pem.write_to_path(where / "root.pem"), context


class _WatchedObject(ssl.SSLObject):
    def do_handshake(self) -> None:
        super().do_handshake()
        self.context.handshakes_done += 1  # type: ignore[attr-defined]


class WatchedContext(ssl.SSLContext):
    """A client context that counts the TLS handshakes begun (the loop wraps its BIOs as it sends the
    ClientHello) and completed."""

    sslobject_class = _WatchedObject
    handshakes_begun = 0
    handshakes_done = 0

    def wrap_bio(self, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO, server_side: bool = False,
                 server_hostname: str | bytes | None = None, session: ssl.SSLSession | None = None) -> ssl.SSLObject:
        self.handshakes_begun += 1
        return super().wrap_bio(incoming, outgoing, server_side, server_hostname, session)


class LateHub:
    """A TLS 1.3 server on a plain listening socket that answers the ClientHello with its whole flight
    (ServerHello to Finished) and then never reads again: the client's handshake completes, its request
    is never answered."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.accepted: list[socket.socket] = []

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.listener.getsockname()[1]}"

    def answer_hello(self) -> None:
        """Blocking: the ClientHello is already on its way when this is called."""
        conn, _ = self.listener.accept()
        conn.settimeout(10)  # a safety net against a broken test, not a measurement
        self.accepted.append(conn)
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = self.context.wrap_bio(incoming, outgoing, server_side=True)
        while not outgoing.pending:
            incoming.write(conn.recv(65536))
            with contextlib.suppress(ssl.SSLWantReadError):
                tls.do_handshake()
        conn.sendall(outgoing.read())

    def close(self) -> None:
        for conn in self.accepted:
            conn.close()
        self.listener.close()


class BusyLoop:
    """The gateway's loop in a connect storm: every iteration spends BUSY seconds on other work.

    The tick is queued from the timers phase, so it runs after the I/O callbacks of the iteration before:
    the tick right after the TCP connect runs after uvloop's connection_made (which sends the ClientHello)
    and before the connecting task resumes. That tick lets the hub answer, then overruns the deadline, as a
    long iteration does; in the next iteration the loop reads the hub's flight, the deadline fires, and only
    then does the connecting task run.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, watched: WatchedContext, hub: LateHub) -> None:
        self.loop, self.watched, self.hub = loop, watched, hub
        self.answered = False
        self.running = True

    def tick(self) -> None:
        if not self.running:
            return
        # Armed before the busy wait: uvloop reads its clock when it arms a timer, so the timer is due by
        # the end of this iteration.
        self.loop.call_later(TICK, self.loop.call_soon, self.tick)
        time.sleep(BUSY)
        if self.watched.handshakes_begun and not self.answered:
            self.answered = True
            self.hub.answer_hello()
            time.sleep(CONNECT_TIMEOUT * 2)


def _open_sockets() -> int:
    count = 0
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(FileNotFoundError):  # the directory's own descriptor is gone by now
            count += stat.S_ISSOCK(os.stat(f"/proc/self/fd/{name}").st_mode)
    return count


async def _closed_by_peer(loop: asyncio.AbstractEventLoop, conn: socket.socket) -> bool:
    """Whether the client closes its end: what it still sends (its Finished, a close_notify) is dropped."""
    conn.setblocking(False)
    try:
        while await asyncio.wait_for(loop.sock_recv(conn, 65536), 10):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


def test_a_deadline_between_tcp_connect_and_tls_answer_is_a_quiet_timeout(
        pki: tuple[Path, ssl.SSLContext]) -> None:
    root, server_context = pki
    hub = LateHub(server_context)
    watched = WatchedContext(ssl.PROTOCOL_TLS_CLIENT)
    watched.load_verify_locations(str(root))

    async def scenario() -> tuple[HttpError, list[dict[str, Any]], bool]:
        loop = asyncio.get_running_loop()
        reported: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, context: reported.append(context))
        busy = BusyLoop(loop, watched, hub)
        loop.call_soon(busy.tick)
        await asyncio.sleep(0.05)  # from here on every iteration has its tick
        pool = HttpPool(Origin.from_url(hub.url, HUB_NAME), ssl_context=watched, max_connections=1,
                        connect_timeout=CONNECT_TIMEOUT)
        try:
            with pytest.raises(HttpError) as caught:
                await pool.request("GET", "/", within=10, max_body=100, retry_stale=False)
        finally:
            busy.running = False
            await pool.close()
        closed = await _closed_by_peer(loop, hub.accepted[0])
        for _ in range(3):  # uvloop's SSL callbacks of the dropped connection, had any been left, run here
            await asyncio.sleep(0)
        return caught.value, reported, closed

    sockets_before = _open_sockets()
    try:
        error, reported, closed = uvloop.run(scenario())
    finally:
        hub.close()
    assert watched.handshakes_done == 1  # the race happened: the handshake completed, the pool never saw it
    assert (error.kind, str(error)) == (HttpFailure.TIMEOUT, f"timeout: no connection within {CONNECT_TIMEOUT:g} s")
    assert reported == []  # nothing for the loop's exception handler, which logs "Fatal error on SSL protocol"
    assert closed
    assert _open_sockets() == sockets_before - 1  # the listener is closed too; nothing of the client's is left


# -- the same TLS connections on uvloop when nothing races -------------------------------------------


def _client_context(root: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(root))


def _on_uvloop(scenario: Any) -> tuple[Any, list[dict[str, Any]]]:
    """Run `scenario()` on uvloop; its result and what reached the loop's exception handler."""
    reported: list[dict[str, Any]] = []

    async def main() -> Any:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, context: reported.append(context))
        return await scenario()

    return uvloop.run(main()), reported


def test_on_uvloop_tls_connections_are_kept_alive_and_carry_big_answers(pki: tuple[Path, ssl.SSLContext]) -> None:
    root, server_context = pki
    body = os.urandom(1024 * 1024)  # far over the stream reader's buffer: its flow control pauses the socket
    connections = 0

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
                await writer.drain()
        writer.close()

    async def scenario() -> list[bytes]:
        server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=server_context)
        url = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        pool = HttpPool(Origin.from_url(url, HUB_NAME), ssl_context=_client_context(root), max_connections=1,
                        connect_timeout=5)
        try:
            return [(await pool.request("GET", "/", within=10, max_body=len(body), retry_stale=False)).body
                    for _ in range(2)]
        finally:
            await pool.close()
            server.close()

    bodies, reported = _on_uvloop(scenario)
    assert bodies == [body, body]
    assert connections == 1
    assert reported == []


def test_on_uvloop_a_hub_under_another_name_is_untrusted(pki: tuple[Path, ssl.SSLContext]) -> None:
    root, server_context = pki

    async def scenario() -> HttpError:
        server = await asyncio.start_server(lambda _r, w: w.close(), "127.0.0.1", 0, ssl=server_context)
        url = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        pool = HttpPool(Origin.from_url(url, "other.test.local"), ssl_context=_client_context(root),
                        max_connections=1, connect_timeout=5)
        try:
            with pytest.raises(HttpError) as caught:
                await pool.request("GET", "/", within=10, max_body=100, retry_stale=False)
            return caught.value
        finally:
            await pool.close()
            server.close()

    error, reported = _on_uvloop(scenario)
    assert error.kind is HttpFailure.UNTRUSTED
    assert "Hostname mismatch" in str(error)
    assert reported == []


def test_on_uvloop_a_hub_that_never_answers_the_hello_is_a_quiet_timeout(pki: tuple[Path, ssl.SSLContext]) -> None:
    root, _server_context = pki
    listener = socket.create_server(("127.0.0.1", 0))  # the kernel accepts; nobody reads the ClientHello

    async def scenario() -> tuple[HttpError, bool]:
        loop = asyncio.get_running_loop()
        url = f"https://127.0.0.1:{listener.getsockname()[1]}"
        pool = HttpPool(Origin.from_url(url, HUB_NAME), ssl_context=_client_context(root), max_connections=1,
                        connect_timeout=CONNECT_TIMEOUT)
        try:
            with pytest.raises(HttpError) as caught:
                await pool.request("GET", "/", within=10, max_body=100, retry_stale=False)
        finally:
            await pool.close()
        conn, _ = listener.accept()
        with conn:
            return caught.value, await _closed_by_peer(loop, conn)

    sockets_before = _open_sockets()
    try:
        (error, closed), reported = _on_uvloop(scenario)
    finally:
        listener.close()
    assert error.kind is HttpFailure.TIMEOUT
    assert reported == []
    assert closed
    assert _open_sockets() == sockets_before - 1

"""The chaos proxy itself: each fault is observable from a plain TCP client."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos.control import ProxyProcess

pytestmark = pytest.mark.chaos


@pytest.fixture
def echo_server() -> Iterator[int]:
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=lambda c=conn: _echo(c), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    yield port
    srv.close()


def _echo(conn: socket.socket) -> None:
    with conn:
        while data := conn.recv(4096):
            conn.sendall(data)


@pytest.fixture
def proxy(echo_server: int, tmp_path: Path) -> Iterator[ProxyProcess]:
    p = ProxyProcess(("127.0.0.1", echo_server), tmp_path)
    yield p
    p.stop()


def _roundtrip(port: int, timeout: float = 2.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(b"ping")
        return sock.recv(4)


def test_pass_forwards(proxy: ProxyProcess) -> None:
    assert _roundtrip(proxy.port) == b"ping"


def test_refuse_closes_the_port(proxy: ProxyProcess) -> None:
    proxy.command("refuse")
    with pytest.raises(ConnectionRefusedError):
        _roundtrip(proxy.port)
    proxy.command("pass")
    assert _roundtrip(proxy.port) == b"ping"


def test_blackhole_accepts_but_never_answers(proxy: ProxyProcess) -> None:
    proxy.command("blackhole")
    with pytest.raises(socket.timeout):
        _roundtrip(proxy.port, timeout=0.5)


def test_cut_drops_live_connections(proxy: ProxyProcess) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=2) as sock:
        sock.sendall(b"ping")
        assert sock.recv(4) == b"ping"
        assert "cut" in proxy.command("cut")
        sock.settimeout(2)
        with contextlib.suppress(ConnectionResetError):
            assert sock.recv(4) == b""


def test_latency_delays(proxy: ProxyProcess) -> None:
    import time

    proxy.command("latency 300")
    start = time.monotonic()
    assert _roundtrip(proxy.port) == b"ping"
    assert time.monotonic() - start >= 0.55  # both directions

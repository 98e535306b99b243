"""A TLS 1.3 KeyUpdate from a real client once the connection has left OpenSSL for the gateway's own record
layer (gateway.tls.record13): `openssl s_client`'s `K` (update its keys and ask the gateway to update its
own) and `k` (update its keys only) must leave the connection working both ways. Long-lived device
connections may rotate keys at any time; this is the outside witness that our key schedule is OpenSSL's."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from gateway.pki import CA
from gateway.tls.contexts import build_device_server_context
from gateway.tls.session import TLSSession

pytestmark = pytest.mark.integration


def serve_echo(listener: socket.socket, ctx: object, seen: dict[str, object]) -> None:
    """One connection: the handshake, the peer identity, then echo."""
    conn, addr = listener.accept()
    conn.settimeout(30)
    tls = TLSSession(ctx)  # type: ignore[arg-type]
    try:
        while True:
            data = conn.recv(65536)
            if not data:
                return
            tls.receive(data)
            if not tls.handshake_done:
                done = tls.advance_handshake()
                conn.sendall(tls.outgoing())
                if not done:
                    continue
                seen["peer"] = tls.peer_identity(addr)
                seen["records"] = tls.records is not None
            plaintext = tls.read()
            if plaintext:
                tls.write(b"echo:" + plaintext)
            conn.sendall(tls.outgoing())  # the echo, and our own KeyUpdate when the client asked for one
            if tls.closed:
                return
    except Exception as exc:  # reported to the test, which fails on it
        seen["error"] = exc
    finally:
        conn.close()


def test_a_key_update_after_the_session_is_released(tmp_path: Path) -> None:
    root = CA.create_root("KeyUpdate Root")
    server = root.create_child_ca("KeyUpdate Edge CA", path_length=0).issue_server_cert("edgegateway.local")
    chain = server.fullchain_pem().write_to_path(tmp_path / "server.pem")
    key = server.private_key_pem.write_to_path(tmp_path / "server.key", private=True)
    device = root.issue_device_cert("sensor-1")
    dev_cert = device.cert_pem.write_to_path(tmp_path / "dev.pem")
    dev_key = device.private_key_pem.write_to_path(tmp_path / "dev.key", private=True)
    root_pem = root.cert_pem.write_to_path(tmp_path / "root.pem")

    listener = socket.create_server(("127.0.0.1", 0))
    seen: dict[str, object] = {}
    thread = threading.Thread(target=serve_echo, args=(listener, build_device_server_context(chain, key), seen),
                              daemon=True)
    thread.start()
    client = subprocess.Popen(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{listener.getsockname()[1]}", "-tls1_3",
         "-servername", "edgegateway.local", "-CAfile", str(root_pem), "-cert", str(dev_cert), "-key", str(dev_key)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert client.stdin is not None
    try:
        for line in (b"before\n", b"K\n", b"after\n", b"k\n", b"last\n"):
            if client.poll() is not None:
                break
            time.sleep(0.5)
            client.stdin.write(line)
            client.stdin.flush()
        time.sleep(0.5)
        out, _ = client.communicate(timeout=30)  # EOF on stdin: s_client closes the connection
    finally:
        client.kill()
        listener.close()
    thread.join(10)
    text = out.decode(errors="replace")
    assert "error" not in seen, seen
    assert "peer" in seen, text
    assert seen.get("records") is True  # the connection had left OpenSSL for gateway.tls.record13
    assert "KEYUPDATE" in text
    assert "echo:before" in text
    assert "echo:after" in text, text  # both directions work with the new keys
    assert "echo:last" in text, text  # and after a second update, of the client's keys only

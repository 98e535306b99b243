"""Fetch the chain a gateway presents without trusting it, to explain a failed handshake."""

from __future__ import annotations

import contextlib
import socket

from cryptography import x509
from OpenSSL import SSL


def presented_chain(address: str, port: int, server_name: str, timeout: float = 5.0) -> list[x509.Certificate]:
    """The certificates the server sends (leaf first); no verification, no client certificate."""
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_verify(SSL.VERIFY_NONE, lambda *_: True)
    with socket.create_connection((address, port), timeout=timeout) as raw:
        conn = SSL.Connection(ctx, raw)
        conn.set_tlsext_host_name(server_name.encode())
        conn.set_connect_state()
        raw.setblocking(True)
        # The server may abort once it sees we have no client certificate; its chain came first.
        with contextlib.suppress(SSL.Error):
            conn.do_handshake()
        chain = conn.get_peer_cert_chain(as_cryptography=True) or []
        return list(chain)

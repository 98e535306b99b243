"""Second connections that explain a failed first one: the chain a gateway presents (without trusting
it), and what a gateway says about this device's certificate."""

from __future__ import annotations

import ipaddress
import select
import socket
import ssl
import time

from cryptography import x509
from OpenSSL import SSL


def presented_chain(address: str, port: int, server_name: str, timeout: float = 5.0) -> list[x509.Certificate]:
    """The certificates the server sends (leaf first), over a separate connection that verifies
    nothing and offers no client certificate. OSError (TimeoutError after `timeout`) when unreachable."""
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    # Python's ssl hands out only the leaf of an unverified peer; pyOpenSSL gives the whole chain.
    ctx.set_verify(SSL.VERIFY_NONE, lambda *_: True)
    deadline = time.monotonic() + timeout
    with socket.create_connection((address, port), timeout=timeout) as raw:
        raw.setblocking(False)
        conn = SSL.Connection(ctx, raw)
        if not _is_ip(server_name):
            conn.set_tlsext_host_name(server_name.encode("idna"))
        conn.set_connect_state()
        while True:
            try:
                conn.do_handshake()
                break
            except SSL.WantReadError:
                readable, writable = [raw], []
            except SSL.WantWriteError:
                readable, writable = [], [raw]
            except SSL.Error:
                # The gateway may abort once it sees no client certificate; its chain came first.
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not any(select.select(readable, writable, [], remaining)):
                raise TimeoutError(f"no TLS handshake from {address}:{port} within {timeout:g} s")
        return list(conn.get_peer_cert_chain(as_cryptography=True) or [])


def device_verdict(address: str, port: int, context: ssl.SSLContext, timeout: float = 2.0) -> ssl.SSLError | None:
    """The TLS alert the gateway sends about this device's certificate, or None if it sends none.

    This connection sends nothing after its handshake: when the gateway rejects the device and closes,
    any data the device had already sent (paho's CONNECT) makes the gateway's kernel answer with a TCP
    reset, which can discard the alert before the device reads it. A gateway that accepts the
    certificate just waits for CONNECT, and `timeout` runs out.
    """
    try:
        with socket.create_connection((address, port), timeout=timeout) as raw, context.wrap_socket(raw) as tls:
            tls.recv(1)
    except ssl.SSLError as exc:
        return exc
    except OSError:
        return None
    return None


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True

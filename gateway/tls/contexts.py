"""The one place that builds SSL contexts.

Device side: a pyOpenSSL context that *requests* a client certificate and records OpenSSL's verdict
instead of enforcing it, because Python's `ssl` has no verify callback (CPython #75425) and thumbprint
devices present self-signed certificates. The real decision is `gateway.auth.decision.authenticate`.

Hub side: a stdlib `ssl` client context with mutual TLS, verifying the hub against its own root.
"""

from __future__ import annotations

import ssl
import threading
from pathlib import Path

from OpenSSL import SSL, crypto

from gateway.errors import PKIError
from gateway.tls.session import remember_secret


def _accept_any_chain(_conn: SSL.Connection, _cert: crypto.X509, _errnum: int, _depth: int, _ok: int) -> bool:
    # Accept every chain here: identity is decided at CONNECT, where we know which device is claimed.
    # The client still proves possession of its key with the TLS CertificateVerify message.
    return True


def build_device_server_context(chain_path: Path, key_path: Path) -> SSL.Context:
    """A server context presenting leaf + Edge CA + intermediates, TLS 1.2/1.3, client cert requested."""
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    # No session cache or tickets: every connection shows its certificate and is decided afresh,
    # and idle connections carry no resumption state.
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    ctx.set_options(SSL.OP_NO_TICKET | SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE)
    # Frees OpenSSL's read/write buffers while a connection is idle: most of an idle device's memory.
    ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
    try:
        ctx.use_certificate_chain_file(str(chain_path))
        ctx.use_privatekey_file(str(key_path))
        ctx.check_privatekey()
    except SSL.Error as exc:
        raise PKIError(f"cannot use server certificate {chain_path} with key {key_path}: {exc}") from exc
    ctx.set_verify(SSL.VERIFY_PEER, _accept_any_chain)
    ctx.set_verify_depth(8)
    # The traffic secrets of each handshake go to its TLSSession (never to a file or a log), so that a
    # TLS 1.3 connection can leave OpenSSL's memory once the handshake is over (gateway.tls.handoff).
    ctx.set_keylog_callback(remember_secret)
    return ctx


class ServerContextHolder:
    """Holds the current device-side context; swapping it changes what *new* connections get.

    Existing connections keep the SSL object they were built with, so a renewed server certificate
    reaches new devices without dropping anyone.
    """

    def __init__(self, chain_path: Path, key_path: Path) -> None:
        self._lock = threading.Lock()
        self._ctx = build_device_server_context(chain_path, key_path)
        self.chain_path, self.key_path = chain_path, key_path

    @property
    def current(self) -> SSL.Context:
        return self._ctx

    def reload(self, chain_path: Path | None = None, key_path: Path | None = None) -> None:
        """Build a context from the (new) files and swap it in; raises PKIError and keeps the old one."""
        chain_path = chain_path or self.chain_path
        key_path = key_path or self.key_path
        ctx = build_device_server_context(chain_path, key_path)
        with self._lock:
            self._ctx, self.chain_path, self.key_path = ctx, chain_path, key_path


def build_hub_client_context(root_path: Path, cert_path: Path, key_path: Path) -> ssl.SSLContext:
    """Mutual-TLS client context for the hub: verify the hub against `root_path` and its hostname."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=None)
    ctx.load_verify_locations(cafile=str(root_path))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    try:
        ctx.load_cert_chain(str(cert_path), str(key_path))
    except (ssl.SSLError, OSError) as exc:
        raise PKIError(f"cannot use identity certificate {cert_path} with key {key_path}: {exc}") from exc
    return ctx

"""TLS over memory buffers (sans-IO): bytes from the network in, plaintext out, and back.

Nothing here touches a socket or the event loop; `gateway.frontdoor.connection` moves the bytes.
"""

from __future__ import annotations

import contextlib
import threading

from OpenSSL import SSL
from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _lib

from gateway.records import PeerIdentity

# OpenSSL hands out at most one TLS record (16 KiB of plaintext) per read.
_READ_CHUNK = 16384
_WANT_READ = _lib.SSL_ERROR_WANT_READ


class _Scratch(threading.local):
    """One read buffer per thread (the event loop's, in the gateway): pyOpenSSL's `recv` allocates
    16 KiB for every call and raises an exception to say "nothing more", which was a good share of a
    small message's CPU. A buffer per connection would cost 16 KiB of memory per device instead."""

    def __init__(self) -> None:
        self.buf = _ffi.new("char[]", _READ_CHUNK)
        self.view = _ffi.buffer(self.buf)


_scratch = _Scratch()


class TLSFailed(Exception):
    """The TLS layer failed: handshake error, garbage instead of TLS, or a broken record."""


class TLSSession:
    """One server-side TLS connection driven through memory BIOs."""

    __slots__ = ("_conn", "closed", "handshake_done")

    def __init__(self, ctx: SSL.Context) -> None:
        self._conn = SSL.Connection(ctx, None)
        self._conn.set_accept_state()
        self.handshake_done = False
        self.closed = False

    def receive(self, data: bytes) -> None:
        """Feed ciphertext that arrived from the network."""
        self._conn.bio_write(data)

    def advance_handshake(self) -> bool:
        """Drive the handshake with what has arrived; True once it is complete."""
        if self.handshake_done:
            return True
        try:
            self._conn.do_handshake()
        except SSL.WantReadError:
            return False
        except SSL.Error as exc:
            raise TLSFailed(_describe(exc)) from exc
        self.handshake_done = True
        _renew_memory_bios(self._conn)
        return True

    def read(self) -> bytes:
        """All plaintext decrypted so far (b"" if none); sets `closed` on the peer's close_notify."""
        chunks: list[bytes] = []
        scratch = _scratch
        ssl = self._conn._ssl
        while True:
            n = _lib.SSL_read(ssl, scratch.buf, _READ_CHUNK)
            if n > 0:
                chunks.append(scratch.view[:n])
                continue
            if _lib.SSL_get_error(ssl, n) == _WANT_READ:
                break
            # Anything but "need more bytes" (close_notify, a bad record): pyOpenSSL maps it to its
            # exceptions, as `recv` would have.
            try:
                self._conn._raise_ssl_error(ssl, n)
            except SSL.ZeroReturnError:
                self.closed = True
                break
            except SSL.WantReadError:
                break
            except SSL.Error as exc:
                raise TLSFailed(_describe(exc)) from exc
            break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def write(self, data: bytes) -> None:
        """Encrypt plaintext; the ciphertext waits in `outgoing()`."""
        try:
            self._conn.sendall(data)
        except SSL.Error as exc:
            raise TLSFailed(_describe(exc)) from exc

    def outgoing(self) -> bytes:
        """Ciphertext ready for the network (b"" if none)."""
        bio, scratch = self._conn._from_ssl, _scratch
        chunks: list[bytes] = []
        while (n := _lib.BIO_read(bio, scratch.buf, _READ_CHUNK)) > 0:
            chunks.append(scratch.view[:n])
        return b"" if not chunks else chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def close(self) -> None:
        """Queue a close_notify alert (sent with the next `outgoing()`)."""
        with contextlib.suppress(SSL.Error):
            self._conn.shutdown()

    def peer_identity(self, remote: tuple[str, int]) -> PeerIdentity:
        """The peer's certificate chain as sent (leaf first) and its thumbprints.

        OpenSSL keeps its own copy in the session (about 2 KiB per idle device). Releasing it once this is
        read would be safe for everything but a TLS 1.3 KeyUpdate, which then fails ("unexpected
        message"): tests/integration/test_tls_keyupdate.py shows it with openssl s_client's K command."""
        from gateway.pki import thumbprint_sha1, thumbprint_sha256

        leaf = self._conn.get_peer_certificate(as_cryptography=True)
        if leaf is None:
            return PeerIdentity(chain=(), sha256=None, sha1=None, remote=remote)
        # On the server side OpenSSL's peer chain excludes the leaf; keep what the client sent, in order.
        rest = self._conn.get_peer_cert_chain(as_cryptography=True) or []
        chain = (leaf, *[c for c in rest if c != leaf])
        return PeerIdentity(chain=chain, sha256=thumbprint_sha256(leaf), sha1=thumbprint_sha1(leaf), remote=remote)

    @property
    def protocol_version(self) -> str:
        return str(self._conn.get_protocol_version_name())


def _renew_memory_bios(conn: SSL.Connection) -> None:
    """Give the connection fresh, empty memory BIOs, moving across any bytes still in the old ones.

    A memory BIO keeps the capacity of the largest burst it ever held, and the biggest bursts are the
    handshake flights (certificate chains both ways): 5.7 KiB per idle device connection that nothing
    reads again (44 -> 38 KiB of native memory per server-side TLS 1.3 connection, 2,000 connections,
    pyOpenSSL 26.4 / OpenSSL 4.0). pyOpenSSL has no call for this, so it reaches into its Connection;
    `tests/unit/test_tls_session.py` fails if those internals move.
    """
    old_in, old_out = conn._into_ssl, conn._from_ssl
    new_in, new_out = _lib.BIO_new(_lib.BIO_s_mem()), _lib.BIO_new(_lib.BIO_s_mem())
    if new_in == _ffi.NULL or new_out == _ffi.NULL:
        for bio in (new_in, new_out):
            if bio != _ffi.NULL:
                _lib.BIO_free(bio)
        return  # out of memory: keep the old (working) BIOs
    buf = _ffi.new("char[]", _READ_CHUNK)
    for old, new in ((old_in, new_in), (old_out, new_out)):
        while (n := _lib.BIO_read(old, buf, _READ_CHUNK)) > 0:
            _lib.BIO_write(new, buf, n)
    _lib.SSL_set_bio(conn._ssl, new_in, new_out)
    conn._into_ssl, conn._from_ssl = new_in, new_out


def _describe(exc: SSL.Error) -> str:
    parts: list[str] = []
    for arg in exc.args:
        if isinstance(arg, list):
            parts.extend(str(item[2]) for item in arg if isinstance(item, tuple) and len(item) == 3)
        else:
            parts.append(str(arg))
    return "; ".join(p for p in parts if p) or exc.__class__.__name__

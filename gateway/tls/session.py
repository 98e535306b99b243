"""TLS over memory buffers (sans-IO): bytes from the network in, plaintext out, and back.

OpenSSL (pyOpenSSL, for its verify callback) runs the handshake; a TLS 1.3 connection is then handed
over to `gateway.tls.record13`, which keeps only the traffic keys, and OpenSSL's connection is freed
(see `gateway.tls.handoff` for how the hand-over is made exact). TLS 1.2 stays with OpenSSL.
Nothing here touches a socket or the event loop; `gateway.frontdoor.connection` moves the bytes.
"""

from __future__ import annotations

import contextlib
import threading

from cryptography import x509
from OpenSSL import SSL
from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _lib

from gateway.errors import TLSFailed
from gateway.records import PeerIdentity
from gateway.tls.handoff import parse_key_log_line, take_over
from gateway.tls.record13 import Records13

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


# What the hand-over to the TLS 1.3 record layer keeps of the handshake's bytes: a client's flights with a
# long certificate chain are a few KiB, and the records that follow its Finished are read again by the new
# layer. A client that sends more before the handshake is over stays with OpenSSL.
HANDSHAKE_TRANSCRIPT_LIMIT = 64 * 1024

__all__ = ["TLSFailed", "TLSSession", "remember_secret"]


class TLSSession:
    """One server-side TLS connection driven through memory BIOs, then (TLS 1.3) through `Records13`."""

    __slots__ = ("_conn", "_peer", "_received", "_records", "_secrets", "_sent", "_version", "closed",
                 "handshake_done")

    def __init__(self, ctx: SSL.Context) -> None:
        self._conn: SSL.Connection | None = SSL.Connection(ctx, None)
        self._conn.set_accept_state()
        self._conn.set_app_data(self)  # for `remember_secret`, until the handshake is over
        self._records: Records13 | None = None
        self._secrets: dict[str, bytes] | None = {}
        self._received: bytearray | None = bytearray()
        self._sent: list[bytes] | None = []
        self._peer: tuple[x509.Certificate, ...] = ()
        self._version = ""
        self.handshake_done = False
        self.closed = False

    def remember_secret(self, line: bytes) -> None:
        """A key-log line from OpenSSL (through the context's callback): keep the secrets the hand-over needs."""
        if self._secrets is not None and (parsed := parse_key_log_line(line)) is not None:
            self._secrets[parsed[0]] = parsed[1]

    @property
    def records(self) -> Records13 | None:
        """The TLS 1.3 record layer that carries this connection, once OpenSSL handed it over."""
        return self._records

    def receive(self, data: bytes) -> None:
        """Feed ciphertext that arrived from the network."""
        if self._records is not None:
            self._records.receive(data)
            return
        received = self._received
        if received is not None:
            if len(received) + len(data) <= HANDSHAKE_TRANSCRIPT_LIMIT:
                received += data
            else:
                self._received = None
        assert self._conn is not None
        self._conn.bio_write(data)

    def advance_handshake(self) -> bool:
        """Drive the handshake with what has arrived; True once it is complete."""
        if self.handshake_done:
            return True
        conn = self._conn
        assert conn is not None
        try:
            conn.do_handshake()
        except SSL.WantReadError:
            return False
        except SSL.Error as exc:
            raise TLSFailed(_describe(exc)) from exc
        self.handshake_done = True
        self._version = str(conn.get_protocol_version_name())
        leaf = conn.get_peer_certificate(as_cryptography=True)
        if leaf is not None:
            # On the server side OpenSSL's peer chain excludes the leaf; keep what the client sent, in order.
            rest = conn.get_peer_cert_chain(as_cryptography=True) or []
            self._peer = (leaf, *[c for c in rest if c != leaf])
        self._records = self._hand_over(conn)
        if self._records is not None:
            conn.set_app_data(None)
            self._conn = None  # frees OpenSSL's connection: the SSL object, its session, chain and key shares
        else:
            _renew_memory_bios(conn)
        self._secrets = self._received = self._sent = None
        return True

    def _hand_over(self, conn: SSL.Connection) -> Records13 | None:
        if self._received is None or self._sent is None or self._secrets is None or self._version != "TLSv1.3":
            return None
        unsent = self._openssl_outgoing(conn)
        records = take_over(str(conn.get_cipher_name()), self._secrets, bytes(self._received),
                            b"".join(self._sent), unsent)
        if records is None and unsent:
            _lib.BIO_write(conn._from_ssl, unsent, len(unsent))  # OpenSSL keeps the connection: put them back
        return records

    def read(self) -> bytes:
        """All plaintext decrypted so far (b"" if none); sets `closed` on the peer's close_notify."""
        records = self._records
        if records is not None:
            try:
                return records.read()
            finally:
                self.closed = records.closed
        assert self._conn is not None
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
        if self._records is not None:
            self._records.write(data)
            return
        assert self._conn is not None
        try:
            self._conn.sendall(data)
        except SSL.Error as exc:
            raise TLSFailed(_describe(exc)) from exc

    def outgoing(self) -> bytes:
        """Ciphertext ready for the network (b"" if none)."""
        if self._records is not None:
            return self._records.outgoing()
        assert self._conn is not None
        out = self._openssl_outgoing(self._conn)
        if out and self._sent is not None:
            self._sent.append(out)
        return out

    @staticmethod
    def _openssl_outgoing(conn: SSL.Connection) -> bytes:
        bio, scratch = conn._from_ssl, _scratch
        chunks: list[bytes] = []
        while (n := _lib.BIO_read(bio, scratch.buf, _READ_CHUNK)) > 0:
            chunks.append(scratch.view[:n])
        return b"" if not chunks else chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def close(self) -> None:
        """Queue a close_notify alert (sent with the next `outgoing()`)."""
        if self._records is not None:
            self._records.close()
            return
        with contextlib.suppress(SSL.Error):
            if self._conn is not None:
                self._conn.shutdown()

    def peer_identity(self, remote: tuple[str, int]) -> PeerIdentity:
        """The peer's certificate chain as sent (leaf first) and its thumbprints.

        The chain is handed out once: the session keeps it only until the front door has read it."""
        from gateway.pki import thumbprint_sha1, thumbprint_sha256

        chain, self._peer = self._peer, ()
        if not chain:
            return PeerIdentity(chain=(), sha256=None, sha1=None, remote=remote)
        return PeerIdentity(chain=chain, sha256=thumbprint_sha256(chain[0]), sha1=thumbprint_sha1(chain[0]),
                            remote=remote)

    @property
    def protocol_version(self) -> str:
        return self._version


def remember_secret(conn: SSL.Connection, line: bytes) -> None:
    """The device-side context's key-log callback: hands the line to the connection's TLSSession."""
    session = conn.get_app_data()
    if isinstance(session, TLSSession):
        session.remember_secret(line)


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

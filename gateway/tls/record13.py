"""TLS 1.3's record layer (RFC 8446 §5, §4.6.3, §7.2) for a connection whose handshake OpenSSL completed.

Why it exists: once the handshake is over, a live device connection needs two traffic secrets and two
sequence numbers, yet OpenSSL keeps its whole connection: the SSL object, the session with the client's
certificate chain, both key shares (a post-quantum client's ML-KEM share too) and its BIOs, 35-40 KiB
per idle device. `gateway.tls.session.TLSSession` hands a TLS 1.3 connection over to `Records13` right
after the handshake and frees OpenSSL's. The cryptography is `cryptography`'s AEADs and HKDF; this
module only frames, counts and derives, as RFC 8446 says.

Sans-IO: ciphertext in, plaintext out; plaintext in, ciphertext out. No socket, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from gateway.errors import TLSFailed

# RFC 8446 §5.1 and §5.2: a record's plaintext is at most 2^14 bytes, its ciphertext at most 2^14 + 256.
MAX_PLAINTEXT = 1 << 14
MAX_CIPHERTEXT = MAX_PLAINTEXT + 256
HEADER = 5
# §5.5: AES-GCM keys are good for 2^24.5 full-size records; we update ours well before (a device sending
# 10 records a second reaches this in ten days).
KEY_UPDATE_AFTER = 1 << 23
# §5.3: the nonce is the IV XORed with the 64-bit sequence number; that number must never wrap.
MAX_SEQ = (1 << 64) - 1

APPLICATION_DATA, ALERT, HANDSHAKE, CHANGE_CIPHER_SPEC = 23, 21, 22, 20
KEY_UPDATE = 24
UPDATE_NOT_REQUESTED, UPDATE_REQUESTED = 0, 1

# §6: the alerts this layer sends or understands.
CLOSE_NOTIFY, UNEXPECTED_MESSAGE, BAD_RECORD_MAC, RECORD_OVERFLOW = 0, 10, 20, 22
DECODE_ERROR, USER_CANCELED = 50, 90


@dataclass(frozen=True, slots=True)
class Suite:
    """What a TLS 1.3 cipher suite means for the record layer."""

    name: str
    aead: type[AESGCM] | type[ChaCha20Poly1305]
    key_length: int
    hash: type[hashes.SHA256] | type[hashes.SHA384]


SUITES = {s.name: s for s in (
    Suite("TLS_AES_128_GCM_SHA256", AESGCM, 16, hashes.SHA256),
    Suite("TLS_AES_256_GCM_SHA384", AESGCM, 32, hashes.SHA384),
    Suite("TLS_CHACHA20_POLY1305_SHA256", ChaCha20Poly1305, 32, hashes.SHA256),
)}


def hkdf_expand_label(suite: Suite, secret: bytes, label: bytes, context: bytes, length: int) -> bytes:
    """HKDF-Expand-Label (RFC 8446 §7.1)."""
    full = b"tls13 " + label
    info = length.to_bytes(2, "big") + bytes([len(full)]) + full + bytes([len(context)]) + context
    if length <= suite.hash.digest_size:
        # HKDF-Expand's first block, T(1) = HMAC(secret, info | 0x01) (RFC 5869 §2.3), is all that every
        # key, IV and secret of the record layer needs: one HMAC (3.6 us) instead of an HKDF object
        # (9.4 us), eight per handshake (tests/unit/test_record13.py checks both ways agree).
        mac = hmac.HMAC(secret, suite.hash())
        mac.update(info + b"\x01")
        return mac.finalize()[:length]
    return HKDFExpand(suite.hash(), length, info).derive(secret)


class TrafficKeys:
    """One direction's keys (§7.3): the AEAD with its key, the IV and the next sequence number."""

    __slots__ = ("aead", "iv", "secret", "seq", "suite")

    def __init__(self, suite: Suite, secret: bytes, seq: int = 0) -> None:
        self.suite, self.secret, self.seq = suite, secret, seq
        self.aead = suite.aead(hkdf_expand_label(suite, secret, b"key", b"", suite.key_length))
        self.iv = int.from_bytes(hkdf_expand_label(suite, secret, b"iv", b"", 12), "big")

    def next_nonce(self) -> bytes:
        if self.seq >= MAX_SEQ:
            raise TLSFailed("TLS 1.3 sequence number exhausted")
        nonce = (self.iv ^ self.seq).to_bytes(12, "big")
        self.seq += 1
        return nonce

    def updated(self) -> TrafficKeys:
        """The next generation of keys (§7.2: application_traffic_secret_N+1), sequence number 0."""
        suite = self.suite
        return TrafficKeys(suite, hkdf_expand_label(suite, self.secret, b"traffic upd", b"", suite.hash.digest_size))


def seal(keys: TrafficKeys, content_type: int, data: bytes) -> bytes:
    """One protected record (§5.2) carrying `data` (at most MAX_PLAINTEXT bytes) as `content_type`."""
    length = len(data) + 1 + 16
    header = bytes((APPLICATION_DATA, 3, 3, length >> 8, length & 0xFF))
    return header + keys.aead.encrypt(keys.next_nonce(), data + bytes((content_type,)), header)


def open_record(keys: TrafficKeys, header: bytes, body: bytes) -> tuple[int, bytes]:
    """(content type, content) of one protected record, or InvalidTag; advances the sequence number
    only when the record authenticates."""
    nonce = (keys.iv ^ keys.seq).to_bytes(12, "big")
    inner = keys.aead.decrypt(nonce, body, header)
    keys.seq += 1
    return _strip_padding(inner)


def _strip_padding(inner: bytes) -> tuple[int, bytes]:
    """§5.4: the content type is the last non-zero byte; the zeros after it are padding."""
    end = len(inner)
    while end and inner[end - 1] == 0:
        end -= 1
    if not end:
        raise _Fatal(UNEXPECTED_MESSAGE, "a TLS record with no content type")
    return inner[end - 1], inner[: end - 1]


def record_end(data: bytes | bytearray, at: int, n: int) -> int:
    """Where the record that starts at `at` ends, or 0 if it has not arrived whole; an announced length
    over the limit is refused before anything of it is buffered."""
    if n - at < HEADER:
        return 0
    length = (data[at + 3] << 8) | data[at + 4]
    if length > MAX_CIPHERTEXT:
        raise _Fatal(RECORD_OVERFLOW, f"a TLS record of {length} bytes (at most {MAX_CIPHERTEXT})")
    end = at + HEADER + length
    return end if end <= n else 0


def split_records(data: bytes | bytearray) -> tuple[list[tuple[bytes, bytes]], int]:
    """The complete records at the start of `data` as (header, body) pairs, and how many bytes they take."""
    records, at, n = [], 0, len(data)
    while (end := record_end(data, at, n)) > 0:
        records.append((bytes(data[at: at + HEADER]), bytes(data[at + HEADER: end])))
        at = end
    return records, at


class _Fatal(TLSFailed):
    """A fatal error that the peer is told about with `alert` before the connection closes."""

    def __init__(self, alert: int, text: str) -> None:
        super().__init__(text)
        self.alert = alert


class Records13:
    """The record layer of one TLS 1.3 connection after its handshake: `receive` ciphertext, `read`
    plaintext, `write` plaintext, take `outgoing` ciphertext; `closed` once the peer said close_notify."""

    __slots__ = ("_in", "_out", "_read", "_sent_close", "_write", "closed")

    def __init__(self, read: TrafficKeys, write: TrafficKeys, pending_in: bytes = b"",
                 pending_out: bytes = b"") -> None:
        self._read, self._write = read, write
        self._in: bytes | bytearray = pending_in
        self._out: list[bytes] = [pending_out] if pending_out else []
        self.closed = False
        self._sent_close = False

    def receive(self, data: bytes) -> None:
        if self.closed:
            return
        pending = self._in
        if not pending:
            self._in = data  # the common case: whole records, no copy
        elif isinstance(pending, bytearray):
            pending += data
        else:
            self._in = bytearray(pending) + data

    def read(self) -> bytes:
        """All application data that arrived whole (b"" if none). A KeyUpdate is answered on the way;
        a record that does not authenticate, or anything TLS 1.3 forbids here, raises TLSFailed after
        queueing the alert that tells the peer why."""
        if self.closed or len(self._in) < HEADER:
            return b""
        try:
            return self._read_records()
        except _Fatal as exc:
            self._fail(exc.alert)
            raise

    def _read_records(self) -> bytes:
        # The hot path of every device message: one pass over a memoryview of what arrived, no copy of
        # a record before it is opened, the sequence number and nonce kept in locals.
        data = self._in
        view, at, n = memoryview(data), 0, len(data)
        plain: list[bytes] = []
        keys = self._read
        aead, iv, seq = keys.aead, keys.iv, keys.seq
        try:
            while (end := record_end(data, at, n)) > 0:
                if data[at] != APPLICATION_DATA:
                    raise _Fatal(UNEXPECTED_MESSAGE, f"an unprotected TLS record of type {data[at]} after the "
                                                     "handshake")
                try:
                    inner = aead.decrypt((iv ^ seq).to_bytes(12, "big"), view[at + HEADER: end], view[at: at + HEADER])
                except InvalidTag:
                    raise _Fatal(BAD_RECORD_MAC, "a TLS record that does not authenticate (bad record MAC)") from None
                seq += 1
                at = end
                if len(inner) > MAX_PLAINTEXT + 1:
                    raise _Fatal(RECORD_OVERFLOW, f"a TLS record with {len(inner) - 1} bytes of plaintext")
                if inner and inner[-1] == APPLICATION_DATA:  # no padding: the common case
                    plain.append(inner[:-1])
                    continue
                keys.seq = seq
                content_type, content = _strip_padding(inner)
                if content_type == HANDSHAKE:
                    self._on_handshake(content)
                elif content_type == ALERT:
                    self._on_alert(content)
                    if self.closed:
                        return b"".join(plain)
                elif content_type == APPLICATION_DATA:  # padded application data
                    plain.append(content)
                else:
                    raise _Fatal(UNEXPECTED_MESSAGE, f"a TLS record of content type {content_type} after the handshake")
                keys = self._read  # a KeyUpdate starts a new generation
                aead, iv, seq = keys.aead, keys.iv, keys.seq
        finally:
            keys.seq = seq
            view.release()
        self._in = data[at:] if at < n else b""
        return plain[0] if len(plain) == 1 else b"".join(plain)

    def _on_handshake(self, content: bytes) -> None:
        # After the handshake a client may send only KeyUpdate (§4.6.3), 5 bytes, and as it changes keys
        # it must end its record (§5.1): one KeyUpdate per record, nothing before or after it. Post-handshake
        # authentication is not offered, so nothing else may come.
        if len(content) < 4:
            raise _Fatal(UNEXPECTED_MESSAGE, "a TLS handshake message split across records after the handshake")
        kind, length = content[0], int.from_bytes(content[1:4], "big")
        if kind != KEY_UPDATE:
            raise _Fatal(UNEXPECTED_MESSAGE, f"a TLS handshake message of type {kind} after the handshake")
        if length != 1 or len(content) < 5 or content[4] not in (UPDATE_NOT_REQUESTED, UPDATE_REQUESTED):
            raise _Fatal(DECODE_ERROR, "a malformed TLS KeyUpdate")
        if len(content) > 5:
            raise _Fatal(UNEXPECTED_MESSAGE, "a TLS KeyUpdate that does not end its record")
        self._read = self._read.updated()
        if content[4] == UPDATE_REQUESTED:
            self._update_write_keys()

    def _on_alert(self, content: bytes) -> None:
        if len(content) != 2:
            raise _Fatal(DECODE_ERROR, "a malformed TLS alert")
        description = content[1]
        if description == CLOSE_NOTIFY:
            self.closed = True
            self._in = b""
        elif description != USER_CANCELED:  # §6.1: user_canceled is followed by close_notify
            self.closed = True
            self._in = b""
            raise TLSFailed(f"the peer sent TLS alert {description}")

    def _update_write_keys(self) -> None:
        self._out.append(seal(self._write, HANDSHAKE, bytes((KEY_UPDATE, 0, 0, 1, UPDATE_NOT_REQUESTED))))
        self._write = self._write.updated()

    def write(self, data: bytes) -> None:
        """Protect `data` as application data records; the ciphertext waits in `outgoing()`."""
        if self._sent_close:
            raise TLSFailed("write after close_notify")
        out = self._out
        for at in range(0, len(data), MAX_PLAINTEXT):
            if self._write.seq >= KEY_UPDATE_AFTER:
                self._update_write_keys()
            out.append(seal(self._write, APPLICATION_DATA, data[at: at + MAX_PLAINTEXT]))

    def outgoing(self) -> bytes:
        """Ciphertext ready for the network (b"" if none)."""
        out = self._out
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        return data

    def close(self) -> None:
        """Queue a close_notify alert (sent with the next `outgoing()`)."""
        if not self._sent_close:
            self._out.append(seal(self._write, ALERT, bytes((1, CLOSE_NOTIFY))))
            self._sent_close = True

    def _fail(self, alert: int) -> None:
        if not self._sent_close:
            self._out.append(seal(self._write, ALERT, bytes((2, alert))))
            self._sent_close = True
        self.closed = True
        self._in = b""

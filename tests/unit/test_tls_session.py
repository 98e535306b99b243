"""TLSSession over memory BIOs against an in-memory pyOpenSSL client: no sockets, real TLS.

TLS 1.3 connections leave OpenSSL for `Records13` once the handshake is over; TLS 1.2 ones stay. Every
test here talks to OpenSSL's own client, so the record layer is checked against OpenSSL, not against itself."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from OpenSSL import SSL

from gateway.errors import TLSFailed
from gateway.pki import CA
from gateway.tls.contexts import build_device_server_context
from gateway.tls.session import TLSSession

SUITES = ("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256")


@dataclass
class Files:
    chain: Path
    key: Path
    dev_cert: Path
    dev_key: Path

    def server(self) -> SSL.Context:
        return build_device_server_context(self.chain, self.key)

    def client(self, *, max_version: int | None = None, suites: str | None = None) -> SSL.Context:
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        ctx.use_certificate_chain_file(str(self.dev_cert))
        ctx.use_privatekey_file(str(self.dev_key))
        if max_version is not None:
            ctx.set_max_proto_version(max_version)
        if suites is not None:
            ctx.set_tls13_ciphersuites(suites.encode())
        return ctx


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    d: Path = tmp_path_factory.mktemp("tls")
    root = CA.create_root("Session Root")
    edge = root.create_child_ca("Session Edge CA", path_length=0)
    server = edge.issue_server_cert("edgegateway.local")
    device = root.issue_device_cert("sensor-1")
    return Files(server.fullchain_pem().write_to_path(d / "server.pem"),
                 server.private_key_pem.write_to_path(d / "server.key", private=True),
                 device.cert_pem.write_to_path(d / "dev.pem"),
                 device.private_key_pem.write_to_path(d / "dev.key", private=True))


def client_flight(client: SSL.Connection) -> bytes:
    chunks = []
    while True:
        try:
            chunks.append(client.bio_read(65536))
        except SSL.WantReadError:
            return b"".join(chunks)


def handshake(session: TLSSession, client_ctx: SSL.Context, early_app_data: bytes = b"",
              byte_by_byte: bool = False) -> SSL.Connection:
    """Handshake; with TLS 1.3 the client's last flight carries `early_app_data` right behind its
    Finished (TLS 1.2 sends it once the server's Finished is in)."""
    client = SSL.Connection(client_ctx, None)
    client.set_connect_state()
    for _ in range(10):
        try:
            client.do_handshake()
            client_done = True
        except SSL.WantReadError:
            client_done = False  # waiting for the server's next flight
        if client_done and early_app_data:
            client.sendall(early_app_data)
            early_app_data = b""
        flight = client_flight(client)
        for piece in ([flight[i:i + 1] for i in range(len(flight))] if byte_by_byte else [flight] if flight else []):
            session.receive(piece)
            session.advance_handshake()
        if out := session.outgoing():
            client.bio_write(out)
        if session.handshake_done and client_done and not early_app_data:
            break
    return client


def exchange(session: TLSSession, client: SSL.Connection, n: int = 3) -> None:
    for i in range(n):
        client.sendall(b"publish %d" % i)
        session.receive(client_flight(client))
        assert session.read() == b"publish %d" % i
        session.write(b"puback %d" % i)
        client.bio_write(session.outgoing())
        assert client.recv(100) == b"puback %d" % i


@pytest.mark.parametrize("early", [b"", b"\x10" * 40, b"x" * 40_000])
@pytest.mark.parametrize("version", [SSL.TLS1_3_VERSION, SSL.TLS1_2_VERSION])
def test_bytes_behind_the_finished_message_survive_the_hand_over(files: Files, early: bytes, version: int) -> None:
    session = TLSSession(files.server())
    client = handshake(session, files.client(max_version=version), early)
    assert session.handshake_done
    assert (session.records is not None) == (version == SSL.TLS1_3_VERSION)
    assert session.read() == early
    session.write(b"connack")
    client.bio_write(session.outgoing())
    assert client.recv(100) == b"connack"
    client.sendall(b"publish")
    session.receive(client_flight(client))
    assert session.read() == b"publish"


@pytest.mark.parametrize("suite", SUITES)
def test_each_tls13_suite_is_handed_over_and_carries_data_both_ways(files: Files, suite: str) -> None:
    session = TLSSession(files.server())
    client = handshake(session, files.client(suites=suite), b"connect")
    assert client.get_cipher_name() == suite
    assert session.records is not None
    assert session._conn is None  # OpenSSL's connection is gone
    assert session.read() == b"connect"
    exchange(session, client)


def test_the_handshake_fed_byte_by_byte_is_handed_over(files: Files) -> None:
    session = TLSSession(files.server())
    client = handshake(session, files.client(), b"connect", byte_by_byte=True)
    assert session.records is not None
    data = session.read()
    client.sendall(b"more")
    flight = client_flight(client)
    for i in range(len(flight)):
        session.receive(flight[i:i + 1])
        data += session.read()
    assert data == b"connectmore"
    exchange(session, client)


def test_large_writes_and_reads_cross_record_boundaries(files: Files) -> None:
    session = TLSSession(files.server())
    client = handshake(session, files.client())
    big = bytes(range(256)) * 300  # 76,800 bytes: five records each way
    session.write(big)
    client.bio_write(session.outgoing())
    got = b""
    while len(got) < len(big):
        got += client.recv(65536)
    assert got == big
    client.sendall(big)
    session.receive(client_flight(client))
    assert session.read() == big


def test_without_the_key_log_callback_openssl_keeps_the_connection(files: Files) -> None:
    ctx = files.server()
    ctx._keylog_callback = None  # type: ignore[attr-defined]
    from OpenSSL._util import ffi, lib
    lib.SSL_CTX_set_keylog_callback(ctx._context, ffi.NULL)  # type: ignore[attr-defined]
    session = TLSSession(ctx)
    client = handshake(session, files.client(), b"connect")
    assert session.records is None
    assert session.read() == b"connect"
    exchange(session, client)


def test_the_handshake_bios_are_replaced_when_openssl_keeps_the_connection(files: Files) -> None:
    """Guards the reach into pyOpenSSL's internals (TLS 1.2 stays with OpenSSL): if they move, this fails."""
    session = TLSSession(files.server())
    assert session._conn is not None
    before = (session._conn._into_ssl, session._conn._from_ssl)
    handshake(session, files.client(max_version=SSL.TLS1_2_VERSION))
    assert session._conn is not None
    after = (session._conn._into_ssl, session._conn._from_ssl)
    assert session.handshake_done
    assert after[0] != before[0]
    assert after[1] != before[1]


@pytest.mark.parametrize("version", [SSL.TLS1_3_VERSION, SSL.TLS1_2_VERSION])
def test_the_peer_chain_is_what_the_client_sent_and_the_connection_goes_on(files: Files, version: int) -> None:
    session = TLSSession(files.server())
    client = handshake(session, files.client(max_version=version))
    peer = session.peer_identity(("127.0.0.1", 1))
    assert [c.subject.rfc4514_string() for c in peer.chain] == ["CN=sensor-1"]
    assert peer.sha256 is not None
    assert len(peer.sha256) == 64
    assert session.peer_identity(("127.0.0.1", 1)).chain == ()  # handed out once, then let go
    exchange(session, client)
    assert session.protocol_version == ("TLSv1.3" if version == SSL.TLS1_3_VERSION else "TLSv1.2")
    session.close()
    client.bio_write(session.outgoing())
    with pytest.raises(SSL.ZeroReturnError):
        client.recv(100)


def test_the_client_close_notify_closes_the_session(files: Files) -> None:
    session = TLSSession(files.server())
    client = handshake(session, files.client())
    client.sendall(b"last words")
    client.shutdown()
    session.receive(client_flight(client))
    assert session.read() == b"last words"
    assert session.closed


def test_a_tampered_record_is_refused_with_an_alert(files: Files) -> None:
    session = TLSSession(files.server())
    client = handshake(session, files.client())
    client.sendall(b"publish")
    record = bytearray(client_flight(client))
    record[-1] ^= 1
    session.receive(bytes(record))
    with pytest.raises(TLSFailed, match="bad record MAC"):
        session.read()
    client.bio_write(session.outgoing())
    with pytest.raises(SSL.Error, match="bad record mac"):
        client.recv(100)

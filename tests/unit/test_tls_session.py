"""TLSSession over memory BIOs against an in-memory pyOpenSSL client: no sockets, real TLS."""

from __future__ import annotations

from pathlib import Path

import pytest
from OpenSSL import SSL

from gateway.pki import CA
from gateway.tls.contexts import build_device_server_context
from gateway.tls.session import TLSSession


@pytest.fixture(scope="module")
def contexts(tmp_path_factory: pytest.TempPathFactory) -> tuple[SSL.Context, SSL.Context]:
    d: Path = tmp_path_factory.mktemp("tls")
    root = CA.create_root("Session Root")
    edge = root.create_child_ca("Session Edge CA", path_length=0)
    server = edge.issue_server_cert("edgegateway.local")
    chain = server.fullchain_pem().write_to_path(d / "server.pem")
    key = server.private_key_pem.write_to_path(d / "server.key", private=True)
    device = root.issue_device_cert("sensor-1")
    client = SSL.Context(SSL.TLS_CLIENT_METHOD)
    client.use_certificate_chain_file(str(device.cert_pem.write_to_path(d / "dev.pem")))
    client.use_privatekey_file(str(device.private_key_pem.write_to_path(d / "dev.key", private=True)))
    return build_device_server_context(chain, key), client


def client_flight(client: SSL.Connection) -> bytes:
    chunks = []
    while True:
        try:
            chunks.append(client.bio_read(65536))
        except SSL.WantReadError:
            return b"".join(chunks)


def handshake(session: TLSSession, client_ctx: SSL.Context, early_app_data: bytes) -> SSL.Connection:
    """Handshake; the client's last flight carries `early_app_data` right behind its Finished."""
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
        session.receive(client_flight(client))
        if session.advance_handshake():
            break
        client.bio_write(session.outgoing())
    return client


@pytest.mark.parametrize("early", [b"", b"\x10" * 40, b"x" * 40_000])
def test_bytes_behind_the_finished_message_survive_the_bio_renewal(contexts, early: bytes) -> None:
    server_ctx, client_ctx = contexts
    session = TLSSession(server_ctx)
    client = handshake(session, client_ctx, early)
    assert session.handshake_done
    assert session.read() == early
    session.write(b"connack")
    client.bio_write(session.outgoing())
    assert client.recv(100) == b"connack"
    client.sendall(b"publish")
    session.receive(client_flight(client))
    assert session.read() == b"publish"


def test_the_handshake_bios_are_replaced(contexts) -> None:
    """Guards the reach into pyOpenSSL's internals: if they move, this fails, not a device."""
    server_ctx, client_ctx = contexts
    session = TLSSession(server_ctx)
    before = (session._conn._into_ssl, session._conn._from_ssl)
    handshake(session, client_ctx, b"")
    after = (session._conn._into_ssl, session._conn._from_ssl)
    assert session.handshake_done
    assert after[0] != before[0]
    assert after[1] != before[1]


def test_the_peer_chain_is_what_the_client_sent_and_the_connection_goes_on(contexts) -> None:
    server_ctx, client_ctx = contexts
    session = TLSSession(server_ctx)
    client = handshake(session, client_ctx, b"")
    peer = session.peer_identity(("127.0.0.1", 1))
    assert [c.subject.rfc4514_string() for c in peer.chain] == ["CN=sensor-1"]
    assert peer.sha256 is not None
    assert len(peer.sha256) == 64
    for n in range(3):
        client.sendall(b"publish %d" % n)
        session.receive(client_flight(client))
        assert session.read() == b"publish %d" % n
        session.write(b"puback %d" % n)
        client.bio_write(session.outgoing())
        assert client.recv(100) == b"puback %d" % n
    assert session.protocol_version == "TLSv1.3"
    session.close()
    client.bio_write(session.outgoing())
    with pytest.raises(SSL.ZeroReturnError):
        client.recv(100)

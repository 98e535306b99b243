"""What each HTTP failure becomes for the gateway (gateway.hub.client.transport_error): the same sentences
the hub client has always produced, since operators and tests grep them."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from pathlib import Path

import pytest

from gateway.errors import HttpError, HttpFailure, HubRejected, HubUnavailable
from gateway.hub.client import HubClient, transport_error
from gateway.pki.ca import CA

WHERE = "https://10.0.0.1:8443 (hub.local)"


@pytest.mark.parametrize(("failure", "error", "sentence"), [
    (HttpError(HttpFailure.UNTRUSTED, "Hostname mismatch, certificate is not valid for 'x'."), HubUnavailable,
     f"the hub at {WHERE} presented a certificate we do not trust: Hostname mismatch, certificate is not valid "
     "for 'x'."),
    (HttpError(HttpFailure.TIMEOUT, "no connection within 5 s"), HubUnavailable,
     f"the hub at {WHERE} did not answer within 12s (down or blackholed?)"),
    (HttpError(HttpFailure.TLS, "SSLError: [SSL: TLSV1_ALERT_UNKNOWN_CA] tlsv1 alert unknown ca"), HubRejected,
     f"the hub at {WHERE} refused the identity certificate of gateway gw-1 in the TLS handshake (unknown ca)"),
    (HttpError(HttpFailure.TLS, "SSLError: tlsv13 alert certificate required"), HubRejected,
     f"the hub at {WHERE} refused the identity certificate of gateway gw-1 in the TLS handshake "
     "(certificate required)"),
    (HttpError(HttpFailure.REFUSED, "ConnectionRefusedError: x"), HubUnavailable,
     f"cannot talk to the hub at {WHERE}: connection refused (nothing listens there: hub down?)"),
    (HttpError(HttpFailure.RESET, "ConnectionResetError: x"), HubUnavailable,
     f"cannot talk to the hub at {WHERE}: connection reset by the hub (if this persists, check that the hub "
     "trusts our identity certificate)"),
    (HttpError(HttpFailure.CLOSED, "the connection was closed before an answer"), HubUnavailable,
     f"cannot talk to the hub at {WHERE}: the connection was closed before an answer"),
    (HttpError(HttpFailure.MALFORMED, "not an HTTP/1.1 answer (x)"), HubUnavailable,
     f"cannot talk to the hub at {WHERE}: not an HTTP/1.1 answer (x)"),
])
def test_hub_transport_error(failure: HttpError, error: type, sentence: str) -> None:
    mapped = transport_error(failure, WHERE, "gw-1", 12.0)
    assert type(mapped) is error
    assert str(mapped) == sentence


# -- the same, for real: a TLS server that does not trust the gateway's identity certificate -----------


class BlockingTLSServer:
    """OpenSSL's own server loop in a thread (asyncio's TLS server drops a failed handshake without its
    alert): it sends the alert a real hub's TLS terminator sends, then closes."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            raw, _ = self.listener.accept()
            raw.settimeout(5)
            with self.context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False) as tls:
                try:
                    tls.do_handshake()
                    tls.recv(4096)  # TLS 1.3: the client certificate is judged here, after its Finished
                    tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
                except ssl.SSLError:
                    # The alert is out; read what the client sent until it closes, or closing with its
                    # request unread makes the kernel reset the connection, and the reset may overtake the alert.
                    tls.shutdown(socket.SHUT_WR)  # leaves TLS: from here on, plain socket calls
                    while tls.recv(4096):
                        pass

    def close(self) -> None:
        self.listener.close()
        self.thread.join(5)


@pytest.mark.parametrize("tls", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
async def test_a_hub_that_refuses_our_identity_in_tls_is_hub_rejected(tmp_path: Path, tls: ssl.TLSVersion) -> None:
    root, stranger = CA.create_root("hub root"), CA.create_root("not our issuer")
    hub_cert = root.issue_server_cert("hub.test.local")
    identity = root.issue_identity_cert("gw-1")
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(str(hub_cert.fullchain_pem().write_to_path(tmp_path / "hub.pem")),
                                   str(hub_cert.private_key_pem.write_to_path(tmp_path / "hub.key")))
    server_context.load_verify_locations(cafile=str(stranger.cert_pem.write_to_path(tmp_path / "stranger.pem")))
    server_context.verify_mode = ssl.CERT_REQUIRED
    server_context.minimum_version = server_context.maximum_version = tls
    server = BlockingTLSServer(server_context)
    client = HubClient.from_files(url=f"https://127.0.0.1:{server.port}", hostname="hub.test.local",
                                  gateway_id="gw-1", trust_bundle_cert=root.cert_pem.write_to_path(tmp_path / "r.pem"),
                                  identity_cert=identity.cert_pem.write_to_path(tmp_path / "gw.pem"),
                                  identity_pk=identity.private_key_pem.write_to_path(tmp_path / "gw.key"),
                                  request_timeout=5)
    try:
        with pytest.raises(HubRejected, match=r"refused the identity certificate of gateway gw-1 in the TLS "
                                              r"handshake \((unknown ca|certificate unknown|bad certificate)\)"):
            await client.cas()
    finally:
        await client.close()
        server.close()

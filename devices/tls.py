"""The one place a TempSensor's TLS context is built: TLS 1.2+, the gateway verified against the
trust bundle under the name the device was told, the device's certificate chain offered."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509

from gateway.errors import PKIError
from gateway.pki import key_matches_cert, load_certs, load_private_key

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer


class _RecordingSocket(ssl.SSLSocket):
    """Keeps the last socket error on its context: paho logs it and reports only "connection lost",
    and with TLS 1.3 the gateway's refusal of this device's certificate arrives exactly that way."""

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        try:
            return super().recv(buflen, flags)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise
        except OSError as exc:
            self._record(exc)
            raise

    def send(self, data: ReadableBuffer, flags: int = 0) -> int:
        try:
            return super().send(data, flags)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise
        except OSError as exc:
            self._record(exc)
            raise

    def _record(self, exc: OSError) -> None:
        if isinstance(self.context, DeviceTLSContext):
            self.context.last_error = exc


class DeviceTLSContext(ssl.SSLContext):
    """Verifies (and sends as SNI) `gateway_hostname` whatever address the socket dialled.

    paho passes the host it dials as `server_hostname`; with --connect-address that is an IP or some
    other name, and the check must still be against the name the device was told to trust.
    """

    sslsocket_class = _RecordingSocket
    gateway_hostname: str = ""
    last_error: OSError | None = None
    own_cert: x509.Certificate | None = None  # this device's certificate, to explain a refusal by its dates

    def wrap_socket(
        self,
        sock: socket.socket,
        server_side: bool = False,
        do_handshake_on_connect: bool = True,
        suppress_ragged_eofs: bool = True,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLSocket:
        return super().wrap_socket(sock, server_side=server_side, do_handshake_on_connect=do_handshake_on_connect,
                                   suppress_ragged_eofs=suppress_ragged_eofs, server_hostname=self.gateway_hostname,
                                   session=session)


def device_context(gateway_hostname: str, ca_file: Path, cert: Path, key: Path) -> DeviceTLSContext:
    """PKIError naming the file and the problem when a file is missing, unreadable or mismatched."""
    roots = load_certs(ca_file)
    chain = load_certs(cert)
    private_key = load_private_key(key)
    if not key_matches_cert(private_key, chain[0].public_key()):
        raise PKIError(f"the key in {key} does not belong to the certificate in {cert}")
    ctx = DeviceTLSContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname by default
    ctx.gateway_hostname = gateway_hostname
    ctx.own_cert = chain[0]
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_verify_locations(cafile=str(ca_file))
    except ssl.SSLError as exc:
        raise PKIError(f"--ca-file {ca_file}: cannot use its {len(roots)} certificate(s) as roots: {exc}") from exc
    try:
        ctx.load_cert_chain(str(cert), str(key))
    except ssl.SSLError as exc:
        raise PKIError(f"cannot use {cert} with {key}: {exc}") from exc
    return ctx

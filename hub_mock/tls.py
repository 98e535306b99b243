"""The hub's server-side TLS context for the gateway-facing API (stdlib ssl, mutual TLS).

The trust store holds what a gateway's identity cert may chain to: the gateway CA files named in
hub.toml, the registered CAs and the registered self-signed identity certs. Certificates added while
running reach new handshakes at once. Partial chains are allowed so that a registered intermediate CA
or a self-signed identity cert is a trust anchor by itself, as it is for IoT Hub.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from pathlib import Path

from gateway.errors import PKIError


def build_api_context(cert_path: Path, key_path: Path, gateway_cas: Iterable[Path]) -> ssl.SSLContext:
    """TLS 1.2+, server cert chain + key, client certificate required."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    try:
        ctx.load_cert_chain(str(cert_path), str(key_path))
    except (ssl.SSLError, OSError) as exc:
        raise PKIError(f"cannot use hub server certificate {cert_path} with key {key_path}: {exc}") from exc
    for path in gateway_cas:
        try:
            ctx.load_verify_locations(cafile=str(path))
        except (ssl.SSLError, OSError) as exc:
            raise PKIError(f"cannot load gateway CA file {path}: {exc}") from exc
    return ctx


def trust(ctx: ssl.SSLContext, pems: Iterable[str]) -> None:
    """Add certificates to the context's trust store; new handshakes accept chains to them."""
    for pem in pems:
        ctx.load_verify_locations(cadata=pem)

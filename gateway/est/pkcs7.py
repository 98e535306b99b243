"""Reading EST's PKCS#7 certs-only replies (RFC 7030 4.1.3, 4.2.3): base64 or DER, certificates out."""

from __future__ import annotations

import base64
import binascii

from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs7

from gateway.errors import EstReplyInvalid

# Far above any real chain (a few KiB); a bigger reply is not a certificate bundle.
MAX_REPLY_BYTES = 1024 * 1024


def decode_body(body: bytes) -> bytes:
    """The DER inside an EST body: base64 (the RFC's encoding, line breaks allowed), else the bytes as DER."""
    try:
        return base64.b64decode(b"".join(body.split()), validate=True)
    except (binascii.Error, ValueError):
        return body  # binary DER never passes as base64: it carries bytes outside the alphabet


def parse_certs_only(body: bytes, what: str) -> tuple[x509.Certificate, ...]:
    """The certificates of a certs-only PKCS#7 reply; EstReplyInvalid naming `what` otherwise."""
    if len(body) > MAX_REPLY_BYTES:
        raise EstReplyInvalid("reply_too_large", f"the EST {what} reply is {len(body)} bytes, over {MAX_REPLY_BYTES}")
    if not body.strip():
        raise EstReplyInvalid("reply_empty", f"the EST {what} reply is empty")
    der = decode_body(body)
    try:
        certs = pkcs7.load_der_pkcs7_certificates(der)
    except ValueError as exc:
        raise EstReplyInvalid(
            "reply_not_pkcs7", f"the EST {what} reply is not a PKCS#7 certs-only structure: {exc}"
        ) from exc
    if not certs:
        raise EstReplyInvalid("reply_no_certificates", f"the EST {what} reply holds no certificate")
    return tuple(certs)

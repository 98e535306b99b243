"""Certificate thumbprints as IoT Hub shows and compares them."""

from __future__ import annotations

import string

from cryptography import x509
from cryptography.hazmat.primitives import hashes

_HEX = frozenset(string.hexdigits)


def thumbprint_sha256(cert: x509.Certificate) -> str:
    """SHA-256 of the DER certificate, lower-case hex without colons."""
    return cert.fingerprint(hashes.SHA256()).hex()


def thumbprint_sha1(cert: x509.Certificate) -> str:
    """SHA-1 of the DER certificate, lower-case hex without colons (IoT Hub still accepts SHA-1)."""
    return cert.fingerprint(hashes.SHA1()).hex()  # noqa: S303 - an identifier, not a signature


def normalize_thumbprint(text: str) -> str:
    """Lower-case bare hex; accepts colons, spaces and any case. ValueError unless 40 or 64 hex digits."""
    bare = "".join(ch for ch in text if ch not in ": \t").lower()
    if len(bare) not in (40, 64) or not set(bare) <= _HEX:
        raise ValueError(
            f"not a thumbprint: {text!r} (expected 40 hex digits for SHA-1 or 64 for SHA-256, colons allowed)"
        )
    return bare


def colon_form(thumbprint: str) -> str:
    """`AB:CD:...` as openssl prints it."""
    bare = normalize_thumbprint(thumbprint).upper()
    return ":".join(bare[i : i + 2] for i in range(0, len(bare), 2))

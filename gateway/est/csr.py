"""PKCS#10 certificate requests as RFC 7030 carries them: DER, then base64 in the HTTP body."""

from __future__ import annotations

import base64

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.pki import PrivateKey

# RFC 7030 4.2.1 / RFC 2045: base64 bodies in lines of at most 76 characters.
BASE64_LINE = 76


def build_csr(key: PrivateKey, common_name: str, *, ca: bool) -> bytes:
    """A DER CSR for CN=`common_name`, asking for a CA (pathlen 0) or a clientAuth identity cert."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    )
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
    else:
        builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def base64_body(der: bytes) -> bytes:
    """DER as the base64 text EST puts on the wire (Content-Transfer-Encoding: base64)."""
    text = base64.b64encode(der)
    lines = [text[i : i + BASE64_LINE] for i in range(0, len(text), BASE64_LINE)]
    return b"\n".join(lines) + b"\n"

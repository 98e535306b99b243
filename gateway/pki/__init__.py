"""The gateway's PKI: Edge CA, server certs, device and identity certs, thumbprints, chain checks.

Reads like trustme: `CA.create_root().create_child_ca(...).issue_server_cert("edgegateway.local")`.
"""

from gateway.pki.ca import CA, Blob, IssuedCert, cert_pem, is_self_signed, self_signed_device_cert
from gateway.pki.chain import ChainVerdict, verify_chain
from gateway.pki.keys import (
    KeyType,
    PrivateKey,
    key_matches_cert,
    load_private_key,
    write_file_atomic,
    write_private_key,
)
from gateway.pki.loading import load_certs
from gateway.pki.thumbprint import colon_form, normalize_thumbprint, thumbprint_sha1, thumbprint_sha256

__all__ = [
    "CA",
    "Blob",
    "ChainVerdict",
    "IssuedCert",
    "KeyType",
    "PrivateKey",
    "cert_pem",
    "colon_form",
    "is_self_signed",
    "key_matches_cert",
    "load_certs",
    "load_private_key",
    "normalize_thumbprint",
    "self_signed_device_cert",
    "thumbprint_sha1",
    "thumbprint_sha256",
    "verify_chain",
    "write_file_atomic",
    "write_private_key",
]

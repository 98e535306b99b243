"""Reading certificates from PEM files, with errors that name the file."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509

from gateway.errors import PKIError


def load_certs(path: str | Path) -> list[x509.Certificate]:
    """All certificates of a PEM bundle, in file order; PKIError when unreadable, not PEM or empty."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PKIError(f"cannot read certificate file {path}: {exc.strerror or exc}") from exc
    if b"-----BEGIN CERTIFICATE-----" not in data:
        hint = " (it looks like DER: convert with `openssl x509 -inform der`)" if data[:1] == b"\x30" else ""
        raise PKIError(f"{path} holds no PEM certificate{hint}")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise PKIError(f"{path}: malformed PEM certificate: {exc}") from exc

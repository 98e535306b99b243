"""Key types, key generation, and reading/writing keys safely (0600, atomic)."""

from __future__ import annotations

import enum
import os
import tempfile
from pathlib import Path
from typing import TypeAlias

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.errors import PKIError

PrivateKey: TypeAlias = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class KeyType(enum.Enum):
    """ECDSA P-256 by default: a Raspberry Pi 4 is 10-17x slower than a server at public-key work."""

    ECDSA_P256 = "ecdsa-p256"
    RSA_2048 = "rsa-2048"
    RSA_4096 = "rsa-4096"


def generate_key(key_type: KeyType = KeyType.ECDSA_P256) -> PrivateKey:
    if key_type is KeyType.ECDSA_P256:
        return ec.generate_private_key(ec.SECP256R1())
    size = 2048 if key_type is KeyType.RSA_2048 else 4096
    return rsa.generate_private_key(public_exponent=65537, key_size=size)


def private_key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def write_private_key(path: str | Path, pem: bytes) -> None:
    """Write a key file with mode 0600 from the first byte (temp file in the same dir, then rename)."""
    write_file_atomic(path, pem, mode=0o600)


def write_file_atomic(path: str | Path, data: bytes, *, mode: int = 0o644) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_private_key(path: str | Path) -> PrivateKey:
    """Read a PEM private key; PKIError naming the file when it is missing, unreadable or not a key."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PKIError(f"cannot read private key {path}: {exc.strerror or exc}") from exc
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise PKIError(f"{path} is not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise PKIError(f"{path}: only ECDSA and RSA keys are supported")
    return key


def key_matches_cert(key: PrivateKey, cert_public_key: object) -> bool:
    """True when the private key is the one whose public half the certificate carries."""
    fmt = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    public = getattr(cert_public_key, "public_bytes", None)
    if public is None:
        return False
    return bool(key.public_key().public_bytes(enc, fmt) == public(enc, fmt))

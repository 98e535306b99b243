"""The checks `load_config` runs on the files a config names, so a bad certificate or key stops the
gateway before anything starts: each file exists and is readable, certificates are PEM, keys are
unencrypted PEM readable only by their owner and match their certificate, the Edge CA is a CA.

Every failure is a `ConfigError` naming the config key and the file's resolved absolute path.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from gateway.errors import ConfigError

# A PEM trust bundle of every public root is ~220 KB; a bigger file is not a certificate file.
MAX_PEM_FILE_BYTES = 1024 * 1024


def read_file(file: str, key: str, path: Path, *, limit: int = MAX_PEM_FILE_BYTES) -> bytes:
    """The bytes of `path`, or a ConfigError that names the resolved path and why it cannot be read.

    `key` is the config key that names `path`, or "" for the config file itself.
    """
    shown = path.resolve()
    where = (
        "check the path; relative paths are resolved against the config file's directory"
        if key
        else "check the path given with -c/--config"
    )
    try:
        with path.open("rb") as handle:
            data = handle.read(limit + 1)
    except FileNotFoundError:
        raise ConfigError(file, key, f"file not found: {shown}", where) from None
    except IsADirectoryError:
        raise ConfigError(file, key, f"is a directory, not a file: {shown}", where) from None
    except PermissionError:
        raise ConfigError(
            file,
            key,
            f"permission denied reading {shown} (running as uid {os.geteuid()})",
            "make it readable by the user that runs edgegate",
        ) from None
    except OSError as exc:
        raise ConfigError(file, key, f"cannot read {shown}: {exc.strerror or exc}") from exc
    if len(data) > limit:
        raise ConfigError(file, key, f"is larger than {limit // 1024} KiB: {shown}", "give the right file")
    return data


def read_certificates(file: str, key: str, path: Path) -> list[x509.Certificate]:
    """Every PEM certificate in `path` (a chain or bundle), at least one."""
    data = read_file(file, key, path)
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        pass
    shown = path.resolve()
    if b"PRIVATE KEY-----" in data:
        raise ConfigError(
            file, key, f"holds a private key, not a certificate: {shown}", "are cert and key swapped?"
        )
    try:
        x509.load_der_x509_certificate(data)
    except ValueError:
        raise ConfigError(
            file, key, f"holds no PEM certificate: {shown}", "give a PEM file (-----BEGIN CERTIFICATE-----)"
        ) from None
    raise ConfigError(
        file,
        key,
        f"holds a DER certificate; edgegate reads PEM: {shown}",
        f"openssl x509 -inform der -in {shown} -out {shown}.pem",
    )


def read_private_key(file: str, key: str, path: Path) -> PrivateKeyTypes:
    """The unencrypted PEM private key in `path`, which only its owner may read (mode 600)."""
    data = read_file(file, key, path)
    shown = path.resolve()
    try:
        private_key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ConfigError(
            file,
            key,
            f"is an encrypted private key; edgegate needs it unencrypted, guarded by its file mode: {shown}",
            f"(umask 077; openssl pkey -in {shown} -out {shown}.plain), then point {key} at it",
        ) from None
    except UnsupportedAlgorithm:
        raise ConfigError(
            file, key, f"is a private key of an unsupported type: {shown}", "use an ECDSA P-256 or RSA key"
        ) from None
    except ValueError:
        if b"-----BEGIN CERTIFICATE-----" in data:
            raise ConfigError(
                file, key, f"holds a certificate, not a private key: {shown}", "are cert and key swapped?"
            ) from None
        raise ConfigError(
            file, key, f"is not a PEM private key: {shown}", "give the key file (-----BEGIN PRIVATE KEY-----)"
        ) from None
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        raise ConfigError(
            file,
            key,
            f"is a private key that group or others may access (mode {mode:03o}): {shown}",
            f"chmod 600 {shown}",
        )
    return private_key


def check_key_matches(
    file: str, key: str, private_key: PrivateKeyTypes, chain: list[x509.Certificate], cert_key: str
) -> None:
    """The private key must be the one the first certificate of the file was issued for."""
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    public = private_key.public_key().public_bytes(*spki)
    matches = [index for index, cert in enumerate(chain) if cert.public_key().public_bytes(*spki) == public]
    if matches and matches[0] == 0:
        return
    leaf = chain[0].subject.rfc4514_string() or "empty subject"
    fix = f"give the key {cert_key} was issued for, or the certificate of this key"
    if matches:
        fix = f"the key belongs to certificate #{matches[0] + 1} of the file: put that certificate first"
    raise ConfigError(
        file, key, f"does not match {cert_key}: its public key differs from the certificate's ({leaf})", fix
    )


def check_is_ca(file: str, key: str, cert: x509.Certificate) -> None:
    """The certificate may sign others: basicConstraints CA:TRUE, and keyCertSign if key usage is given."""
    subject = cert.subject.rfc4514_string() or "empty subject"
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise ConfigError(
            file,
            key,
            f"is not a CA certificate ({subject} lacks basicConstraints CA:TRUE); the Edge CA signs the "
            "gateway's server certificate",
            "give the Edge CA certificate (edgegate certs create-edge-ca), not a server or device cert",
        )
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    if not usage.key_cert_sign:
        raise ConfigError(file, key, f"is a CA certificate whose key usage lacks keyCertSign ({subject})")


def check_state_dir(file: str, key: str, path: Path) -> None:
    """The state directory may be absent (it is created at start), but not something else."""
    if path.exists() and not path.is_dir():
        raise ConfigError(
            file, key, f"names something that is not a directory: {path.resolve()}", "give a directory path"
        )

"""Certificate authorities and the certificates they issue, in the spirit of trustme.

    root = CA.create_root()
    edge_ca = root.create_child_ca("intermediate").create_child_ca("Edge CA")
    server = edge_ca.issue_server_cert("edgegateway.local", "10.0.0.5")
    device = edge_ca.issue_device_cert("TempSensor")

Validity is always explicit (`now`, `days`, or `not_before`/`not_after`), and wrong certificates can be
issued on purpose for negative tests (`ca_flag=False`, `is_ca=True`, odd EKUs, past dates).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.errors import PKIError
from gateway.pki.keys import (
    KeyType,
    PrivateKey,
    generate_key,
    key_matches_cert,
    load_private_key,
    private_key_pem,
    write_file_atomic,
    write_private_key,
)
from gateway.pki.thumbprint import thumbprint_sha1, thumbprint_sha256

_EKU = {"serverAuth": ExtendedKeyUsageOID.SERVER_AUTH, "clientAuth": ExtendedKeyUsageOID.CLIENT_AUTH}
# Backdating absorbs small clock differences between issuer and verifier (a Pi before NTP sync).
BACKDATE = timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class Blob:
    """PEM bytes with a way to write them; `private=True` writes mode 0600."""

    bytes: bytes

    def write_to_path(self, path: str | Path, *, private: bool = False) -> Path:
        path = Path(path)
        if private:
            write_private_key(path, self.bytes)
        else:
            write_file_atomic(path, self.bytes)
        return path


def cert_pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


@dataclass(frozen=True)
class IssuedCert:
    """A leaf certificate with its key and its issuers (leaf's issuer first, root last)."""

    cert: x509.Certificate
    private_key: PrivateKey
    chain: tuple[x509.Certificate, ...] = field(default=())

    @property
    def cert_pem(self) -> Blob:
        return Blob(cert_pem(self.cert))

    @property
    def private_key_pem(self) -> Blob:
        return Blob(private_key_pem(self.private_key))

    def fullchain_pem(self, *, include_root: bool = False) -> Blob:
        """Leaf + issuers, as a device or server sends them; the root is left out unless asked."""
        issuers = self.chain if include_root else tuple(c for c in self.chain if not is_self_signed(c))
        return Blob(cert_pem(self.cert, *issuers))

    @property
    def thumbprint_sha256(self) -> str:
        return thumbprint_sha256(self.cert)

    @property
    def thumbprint_sha1(self) -> str:
        return thumbprint_sha1(self.cert)


def is_self_signed(cert: x509.Certificate) -> bool:
    return cert.issuer == cert.subject


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _window(
    now: datetime | None, days: int, not_before: datetime | None, not_after: datetime | None
) -> tuple[datetime, datetime]:
    now = now or datetime.now(UTC)
    start = not_before or (now - BACKDATE)
    end = not_after or (now + timedelta(days=days))
    return start, end


def _san(identities: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for identity in identities:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(identity)))
        except ValueError:
            names.append(x509.DNSName(identity))
    return x509.SubjectAlternativeName(names)


def _signing_hash(key: PrivateKey) -> hashes.SHA256:
    return hashes.SHA256()


class CA:
    """A certificate authority: a cert, its key and the issuers above it (root last; empty for a root)."""

    def __init__(self, cert: x509.Certificate, private_key: PrivateKey,
                 chain: tuple[x509.Certificate, ...] = ()) -> None:
        self.cert, self.private_key, self.chain = cert, private_key, chain

    # ---- creation ----------------------------------------------------------------------------

    @classmethod
    def create_root(
        cls,
        common_name: str = "edgegate Test Root",
        *,
        days: int = 3650,
        key_type: KeyType = KeyType.ECDSA_P256,
        path_length: int | None = None,
        now: datetime | None = None,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
    ) -> CA:
        key = generate_key(key_type)
        start, end = _window(now, days, not_before, not_after)
        builder = cls._ca_builder(_name(common_name), _name(common_name), key.public_key(), start, end,
                                  path_length, ca_flag=True)
        builder = builder.add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
        return cls(builder.sign(key, _signing_hash(key)), key)

    def create_child_ca(
        self,
        common_name: str,
        *,
        days: int = 365,
        path_length: int | None = 0,
        key_type: KeyType = KeyType.ECDSA_P256,
        now: datetime | None = None,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
        ca_flag: bool = True,
    ) -> CA:
        """A CA under this one; `ca_flag=False` makes a broken "CA" (CA:FALSE) for negative tests."""
        key = generate_key(key_type)
        start, end = _window(now, days, not_before, not_after)
        end = min(end, self.cert.not_valid_after_utc) if not_after is None else end
        builder = self._ca_builder(_name(common_name), self.cert.subject, key.public_key(), start, end,
                                   path_length, ca_flag=ca_flag)
        builder = self._with_key_ids(builder, key)
        return CA(builder.sign(self.private_key, _signing_hash(self.private_key)), key,
                  (self.cert, *self.chain))

    @staticmethod
    def _ca_builder(subject: x509.Name, issuer: x509.Name, public_key: object, start: datetime,
                    end: datetime, path_length: int | None, *, ca_flag: bool) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(public_key)  # type: ignore[arg-type]
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=ca_flag, path_length=path_length if ca_flag else None),
                           critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=ca_flag, crl_sign=ca_flag,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
        )

    def _with_key_ids(self, builder: x509.CertificateBuilder, key: PrivateKey) -> x509.CertificateBuilder:
        return builder.add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        ).add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(self.private_key.public_key()), critical=False
        )

    # ---- leaves ------------------------------------------------------------------------------

    def issue_server_cert(
        self,
        hostname: str,
        *alt_names: str,
        days: int = 30,
        now: datetime | None = None,
        key_type: KeyType = KeyType.ECDSA_P256,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
    ) -> IssuedCert:
        """CN = hostname, SAN = hostname + alt names (IP SAN for IPs), EKU serverAuth, clamped to our expiry."""
        return self._issue_leaf(hostname, (hostname, *alt_names), ("serverAuth",), days=days, now=now,
                                key_type=key_type, not_before=not_before, not_after=not_after)

    def issue_device_cert(
        self,
        device_id: str,
        *,
        days: int = 365,
        now: datetime | None = None,
        key_type: KeyType = KeyType.ECDSA_P256,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
        eku: Sequence[str] = ("clientAuth",),
        is_ca: bool = False,
        common_name: str | None = None,
        extra_extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
    ) -> IssuedCert:
        """A CA-signed device identity cert, CN = device id (the knobs exist to make wrong ones on purpose;
        `extra_extensions` are (extension, critical) pairs added as given)."""
        return self._issue_leaf(common_name or device_id, (), tuple(eku), days=days, now=now,
                                key_type=key_type, not_before=not_before, not_after=not_after, is_ca=is_ca,
                                extra_extensions=extra_extensions)

    def issue_identity_cert(
        self, gateway_id: str, *, days: int = 365, now: datetime | None = None,
        key_type: KeyType = KeyType.ECDSA_P256,
    ) -> IssuedCert:
        """The gateway's own identity cert, presented to the hub (matched there by thumbprint)."""
        return self._issue_leaf(gateway_id, (), ("clientAuth",), days=days, now=now, key_type=key_type)

    def _issue_leaf(
        self,
        common_name: str,
        san: Sequence[str],
        eku: Sequence[str],
        *,
        days: int,
        now: datetime | None,
        key_type: KeyType,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
        is_ca: bool = False,
        extra_extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
    ) -> IssuedCert:
        key = generate_key(key_type)
        start, end = _window(now, days, not_before, not_after)
        if not_after is None:
            end = min(end, self.cert.not_valid_after_utc)
        builder = _leaf_builder(_name(common_name), self.cert.subject, key, start, end, san, eku, is_ca)
        builder = self._with_key_ids(builder, key)
        for extension, critical in extra_extensions:
            builder = builder.add_extension(extension, critical=critical)
        cert = builder.sign(self.private_key, _signing_hash(self.private_key))
        return IssuedCert(cert, key, (self.cert, *self.chain))

    # ---- files -------------------------------------------------------------------------------

    @property
    def cert_pem(self) -> Blob:
        return Blob(cert_pem(self.cert))

    @property
    def private_key_pem(self) -> Blob:
        return Blob(private_key_pem(self.private_key))

    def chain_pem(self) -> Blob:
        """This CA and the intermediates above it (no root): what goes after a leaf on the wire."""
        return Blob(cert_pem(self.cert, *(c for c in self.chain if not is_self_signed(c))))

    @property
    def root(self) -> x509.Certificate:
        return self.chain[-1] if self.chain else self.cert

    @classmethod
    def load(cls, cert_path: str | Path, key_path: str | Path) -> CA:
        """Load a CA; the cert file may be a full chain with this CA's cert first."""
        from gateway.pki.loading import load_certs

        certs = load_certs(cert_path)
        key = load_private_key(key_path)
        if not key_matches_cert(key, certs[0].public_key()):
            raise PKIError(f"private key {key_path} does not match certificate {cert_path}")
        return cls(certs[0], key, tuple(certs[1:]))


def _leaf_builder(subject: x509.Name, issuer: x509.Name, key: PrivateKey, start: datetime, end: datetime,
                  san: Sequence[str], eku: Sequence[str], is_ca: bool) -> x509.CertificateBuilder:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False,
                key_encipherment=isinstance(key, rsa.RSAPrivateKey) and "serverAuth" in eku,
                data_encipherment=False, key_agreement=False, key_cert_sign=is_ca, crl_sign=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
    )
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage([_EKU[e] for e in eku]), critical=False)
    if san:
        builder = builder.add_extension(_san(san), critical=False)
    return builder


def self_signed_device_cert(
    device_id: str,
    *,
    days: int = 365,
    now: datetime | None = None,
    key_type: KeyType = KeyType.ECDSA_P256,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
) -> IssuedCert:
    """A self-signed device cert for thumbprint authentication (CN = device id, EKU clientAuth)."""
    key = generate_key(key_type)
    start, end = _window(now, days, not_before, not_after)
    builder = _leaf_builder(_name(device_id), _name(device_id), key, start, end, (), ("clientAuth",), False)
    builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    return IssuedCert(builder.sign(key, _signing_hash(key)), key, ())

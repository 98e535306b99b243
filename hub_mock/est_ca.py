"""The EST server's issuing CA: signs what `est_policy` allowed, with the profile's extensions and
lifetime, clamped to the CA's own expiry. Remembers what it issued for the admin view."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID

from gateway.pki import CA
from hub_mock.est_policy import EstClient, Profile

# Absorbs small clock differences, but never more than a tenth of a (drill-sized) lifetime.
MAX_BACKDATE = timedelta(minutes=5)
# The admin view keeps the latest issuances only.
MAX_REMEMBERED = 1000


@dataclass(frozen=True, slots=True)
class Issuance:
    serial: int
    profile: str
    subject: str
    client: str  # "bootstrap:CN", "identity:CN" or "basic:user"
    operation: str  # simpleenroll | simplereenroll
    not_before: datetime
    not_after: datetime
    issued_at: datetime


def _key_usage(ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
        key_agreement=False, key_cert_sign=ca, crl_sign=ca, encipher_only=False, decipher_only=False,
    )


class EstCA:
    """Issues from the EST CA (`ca.cert` signs; `ca.chain` is above it, root last)."""

    def __init__(self, ca: CA) -> None:
        self.ca = ca
        self.issued: list[Issuance] = []

    @property
    def cacerts(self) -> tuple[x509.Certificate, ...]:
        """What /cacerts returns: the issuing CA and every certificate above it."""
        return (self.ca.cert, *self.ca.chain)

    def issued_here(self, cert: x509.Certificate, now: datetime) -> bool:
        """True when this CA signed `cert` and it is inside its dates."""
        if cert.issuer != self.ca.cert.subject or not cert.not_valid_before_utc <= now < cert.not_valid_after_utc:
            return False
        try:
            cert.verify_directly_issued_by(self.ca.cert)
        except (ValueError, TypeError, InvalidSignature):
            return False
        return True

    def issue(self, csr: x509.CertificateSigningRequest, profile: Profile, client: EstClient, operation: str,
              now: datetime) -> x509.Certificate:
        """Sign `csr` (already allowed) under `profile`."""
        start = now - min(MAX_BACKDATE, profile.lifetime / 10)
        end = min(now + profile.lifetime, self.ca.cert.not_valid_after_utc)
        builder = (
            x509.CertificateBuilder()
            .subject_name(csr.subject)
            .issuer_name(self.ca.cert.subject)
            .public_key(csr.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=profile.ca, path_length=0 if profile.ca else None), critical=True)
            .add_extension(_key_usage(profile.ca), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(csr.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.ca.private_key.public_key()), critical=False
            )
        )
        if not profile.ca:
            builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        cert = builder.sign(self.ca.private_key, hashes.SHA256())
        self.issued.append(Issuance(cert.serial_number, profile.name, cert.subject.rfc4514_string(),
                                    f"{client.kind.value}:{client.name}", operation, start, end, now))
        del self.issued[:-MAX_REMEMBERED]
        return cert

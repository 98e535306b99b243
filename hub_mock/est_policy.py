"""The EST server's decisions, pure: who the client is, and whether its CSR may be issued.

Profiles (RFC 7030 3.2.2 labels): the default (no label) issues identity certs (clientAuth,
CN = the authenticated gateway's name); `edge-ca` issues Edge CA certs (CA:TRUE, pathlen 0, CN
starting with the gateway's name). simplereenroll needs a certificate this EST CA issued, and the
same subject as that certificate.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import timedelta

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

IDENTITY_PROFILE = "identity"
EDGE_CA_PROFILE = "edge-ca"
LABELS = {"": IDENTITY_PROFILE, "edge-ca": EDGE_CA_PROFILE}
MIN_RSA_BITS = 2048
ALLOWED_CURVES = (ec.SECP256R1, ec.SECP384R1)


class ClientKind(enum.Enum):
    BOOTSTRAP = "bootstrap"  # a client cert from a bootstrap CA
    IDENTITY = "identity"  # a client cert this EST CA issued
    BASIC = "basic"  # HTTP Basic only


@dataclass(frozen=True, slots=True)
class EstClient:
    kind: ClientKind
    name: str  # the client cert's CN, or the Basic username
    subject: x509.Name | None  # the client cert's subject (None for Basic)


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    ca: bool
    lifetime: timedelta


@dataclass(frozen=True, slots=True)
class EnrollDecision:
    ok: bool
    reason: str  # "ok" or a stable code
    message: str


def _no(reason: str, message: str) -> EnrollDecision:
    return EnrollDecision(False, reason, message)


def common_name(name: x509.Name) -> str | None:
    values = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(values[0].value) if len(values) == 1 else None


def _requests_ca(csr: x509.CertificateSigningRequest) -> bool:
    try:
        return bool(csr.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _key_problem(csr: x509.CertificateSigningRequest) -> str | None:
    key = csr.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        return None if key.key_size >= MIN_RSA_BITS else f"an RSA key of {key.key_size} bits (at least {MIN_RSA_BITS})"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return None if isinstance(key.curve, ALLOWED_CURVES) else f"an EC key on {key.curve.name} (P-256 or P-384)"
    return f"a {type(key).__name__} (ECDSA P-256/P-384 or RSA {MIN_RSA_BITS}+)"


def decide_enrollment(
    csr: x509.CertificateSigningRequest, client: EstClient, profile: Profile, *, reenroll: bool
) -> EnrollDecision:
    """May `client` have `csr` issued under `profile`? Each refusal names the rule and the fix."""
    if not csr.is_signature_valid:
        return _no("csr_signature_invalid", "the CSR's signature does not verify: sign it with the key it carries")
    cn = common_name(csr.subject)
    if not cn:
        return _no("csr_no_common_name", "the CSR's subject needs exactly one common name (CN)")
    weak = _key_problem(csr)
    if weak is not None:
        return _no("csr_weak_key", f"the CSR carries {weak}")
    if reenroll:
        if client.kind is not ClientKind.IDENTITY or client.subject is None:
            return _no("reenroll_needs_identity", "simplereenroll needs the certificate being renewed as the TLS "
                                                  "client certificate; use simpleenroll with a bootstrap certificate")
        if csr.subject != client.subject:
            return _no("reenroll_subject_mismatch",
                       f"simplereenroll may only renew the presented certificate's subject "
                       f"({client.subject.rfc4514_string()}), the CSR asks for {csr.subject.rfc4514_string()}")
    if profile.ca:
        if not cn.startswith(client.name):
            return _no("policy_violation", f"an Edge CA's CN must begin with the gateway's name {client.name!r}, "
                                           f"the CSR asks for {cn!r}")
        return EnrollDecision(True, "ok", f"Edge CA {cn} for {client.name}")
    if _requests_ca(csr):
        return _no("policy_violation", "the identity profile issues end-entity certificates only; the CSR asks "
                                       "for CA:TRUE (use the edge-ca label for an Edge CA)")
    if cn != client.name:
        return _no("policy_violation", f"an identity certificate's CN must be the authenticated gateway's name "
                                       f"{client.name!r}, the CSR asks for {cn!r}")
    return EnrollDecision(True, "ok", f"identity {cn}")

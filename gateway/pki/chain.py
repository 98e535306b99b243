"""Chain verification with `cryptography.x509.verification`: never hand-rolled, always a verdict."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from cryptography import x509
from cryptography.x509 import verification as v
from cryptography.x509.oid import ExtendedKeyUsageOID


@dataclass(frozen=True, slots=True)
class ChainVerdict:
    ok: bool
    reason: str  # "ok" or a stable code
    detail: str
    chain: tuple[x509.Certificate, ...] = ()


def _client_eku(_policy: v.Policy, _cert: x509.Certificate, eku: x509.ExtendedKeyUsage | None) -> None:
    if eku is not None and ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
        raise ValueError("extendedKeyUsage is present but does not include clientAuth")


# Device certificates (certGen.sh's and most vendors') carry no SAN: identity is the CN. The webpki
# end-entity defaults would demand a SAN, so devices get a policy that permits any extension but still
# insists that an EKU, if present, allows client authentication. CA checks keep the webpki defaults
# (basicConstraints CA:TRUE, path length, keyCertSign).
DEVICE_LEAF_POLICY = v.ExtensionPolicy.permit_all().may_be_present(
    x509.ExtendedKeyUsage, v.Criticality.AGNOSTIC, _client_eku
)


def classify_error(message: str) -> str:
    """A stable reason code for a cryptography VerificationError message."""
    text = message.lower()
    for needle, code in _ERROR_CODES:
        if needle in text:
            return code
    return "chain_invalid"


# Ordered: the first needle found wins. cryptography's words are matched here and never shown to a
# user; each code gets its own sentence in gateway.auth.reasons (and devices/diagnose.py).
_ERROR_CODES: tuple[tuple[str, str], ...] = (
    ("forbidden signature algorithm", "weak_signature_algorithm"),
    ("forbidden public key", "weak_key"),
    ("unaccounted-for critical extension", "unknown_critical_extension"),
    ("exceeds max depth", "chain_too_deep"),
    ("basicconstraints.ca must be asserted", "issuer_not_ca"),
    ("path length constraint", "path_length_exceeded"),
    ("clientauth", "eku_not_client_auth"),
    ("required eku not found", "eku_mismatch"),
    ("not valid yet", "not_yet_valid"),
    ("cert is not valid at validation time", "expired_or_not_yet_valid"),
    ("expired", "expired"),
    ("signature does not match", "chain_untrusted"),
    ("all candidates exhausted", "chain_incomplete"),
    ("leaf certificate has no matching subjectAltName", "hostname_mismatch"),
    ("no matching subjectaltname", "hostname_mismatch"),
)


def verify_chain(
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    roots: Sequence[x509.Certificate],
    *,
    now: datetime,
    purpose: Literal["server", "client"],
    hostname: str | None = None,
) -> ChainVerdict:
    """Does `leaf` chain to one of `roots` at `now`? For servers, also: is it for `hostname`?"""
    if not roots:
        return ChainVerdict(False, "no_trust_anchor", "no trusted root certificates were given")
    builder = v.PolicyBuilder().store(v.Store(list(roots))).time(now)
    verify: Callable[[], Sequence[x509.Certificate]]
    try:
        if purpose == "server":
            if hostname is None:
                raise ValueError("a server chain needs the hostname it must be valid for")
            subject = _subject(hostname)
            server_verifier = builder.build_server_verifier(subject)
            verify = lambda: server_verifier.verify(leaf, list(intermediates))  # noqa: E731
        else:
            client_verifier = builder.extension_policies(
                ca_policy=v.ExtensionPolicy.webpki_defaults_ca(), ee_policy=DEVICE_LEAF_POLICY
            ).build_client_verifier()
            verify = lambda: client_verifier.verify(leaf, list(intermediates)).chain  # noqa: E731
        chain = tuple(verify())
    except v.VerificationError as exc:
        reason = classify_error(str(exc))
        if reason == "expired_or_not_yet_valid":
            reason = _which_validity_failure(leaf, [*intermediates, *roots], now)
        return ChainVerdict(False, reason, str(exc))
    return ChainVerdict(True, "ok", "chain verified", chain)


def _which_validity_failure(leaf: x509.Certificate, issuers: Sequence[x509.Certificate], now: datetime) -> str:
    """cryptography says only "not valid at validation time": walk up from the leaf to say which way.

    A clock that is behind (a Pi before NTP sync) shows as "not_yet_valid", and that must stay distinguishable
    from a certificate that has really expired.
    """
    by_subject: dict[x509.Name, list[x509.Certificate]] = {}
    for cert in issuers:
        by_subject.setdefault(cert.subject, []).append(cert)
    current = leaf
    for _ in range(len(issuers) + 1):  # a path never repeats a certificate: this bounds cycles
        if now < current.not_valid_before_utc:
            return "not_yet_valid"
        if now > current.not_valid_after_utc:
            return "expired"
        candidates = by_subject.get(current.issuer, [])
        if not candidates:
            break
        # Prefer an issuer that is itself out of its window: that is the one the path builder tripped on.
        outside = [c for c in candidates if not c.not_valid_before_utc <= now <= c.not_valid_after_utc]
        current = (outside or candidates)[0]
    return "expired_or_not_yet_valid"


def _subject(hostname: str) -> v.Subject:
    try:
        return x509.IPAddress(ipaddress.ip_address(hostname))
    except ValueError:
        return x509.DNSName(hostname)

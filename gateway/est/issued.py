"""Is what the EST server issued usable for the role we asked for? A pure check with a reason code."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.x509.oid import NameOID

from gateway.pki import PrivateKey, is_self_signed, key_matches_cert


@dataclass(frozen=True, slots=True)
class IssuedProblem:
    reason: str  # stable code
    message: str  # what is wrong, for a human


def pick_leaf(certs: Sequence[x509.Certificate], key: PrivateKey) -> x509.Certificate | None:
    """The certificate carrying our public key, wherever the server put it in the bag."""
    return next((c for c in certs if key_matches_cert(key, c.public_key())), None)


def issued_problem(
    certs: Sequence[x509.Certificate], key: PrivateKey, common_name: str, *, ca: bool, now: datetime
) -> IssuedProblem | None:
    """Why the reply cannot be used as our identity cert (ca=False) or Edge CA (ca=True), or None."""
    leaf = pick_leaf(certs, key)
    if leaf is None:
        subjects = ", ".join(c.subject.rfc4514_string() for c in certs)
        return IssuedProblem("key_mismatch", f"no certificate in the reply carries the key we sent in the CSR "
                                             f"(got: {subjects}); the EST server issued for another key")
    names = [str(a.value) for a in leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if names != [common_name]:
        return IssuedProblem("wrong_subject", f"the issued certificate is for CN={names} instead of {common_name!r}")
    try:
        is_ca = leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if is_ca != ca:
        wanted = "a CA certificate (Edge CA)" if ca else "an end-entity identity certificate"
        return IssuedProblem("wrong_kind", f"the issued certificate is not {wanted}: CA={is_ca}")
    if now >= leaf.not_valid_after_utc:
        expired = f"{leaf.not_valid_after_utc:%Y-%m-%d %H:%M:%S}"
        return IssuedProblem("already_expired", f"the issued certificate expired at {expired} UTC")
    return None


def chain_file_certs(leaf: x509.Certificate, bag: Sequence[x509.Certificate],
                     cacerts: Sequence[x509.Certificate]) -> tuple[x509.Certificate, ...]:
    """Leaf first, then the issuers above it that are not roots: what goes in the cert file and on the wire."""
    pool = {c.subject: c for c in [*cacerts, *bag] if not is_self_signed(c)}
    chain = [leaf]
    current = leaf
    while current.issuer in pool and len(chain) < 8:
        current = pool[current.issuer]
        if current in chain:
            break
        chain.append(current)
    return tuple(chain)

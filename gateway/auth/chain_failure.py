"""A failed chain verification in words: which reason, and which certificate, named by its subject.

cryptography's verdict code says what kind of failure it was; its text stays out of every sentence
(it is for the debug log). Pure: certificates and `now` in, a (Reason, sentence) pair out.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import datetime

from cryptography import x509

from gateway.auth.reasons import CHAIN_REASONS, Reason

Failure = tuple[Reason, str]

_WEAK_HASHES = frozenset({"md5", "sha1"})


def _when(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M:%S}Z"


def name(cert: x509.Certificate) -> str:
    """A certificate as people know it: its subject."""
    return cert.subject.rfc4514_string() or "(empty subject)"


def _self_signed(cert: x509.Certificate) -> bool:
    return cert.issuer == cert.subject


def _path(leaf: x509.Certificate, pool: Sequence[x509.Certificate]) -> list[x509.Certificate]:
    """Leaf first, following issuer names through `pool`: how the chain reads, for wording only."""
    by_subject = {c.subject: c for c in pool}
    path = [leaf]
    while not _self_signed(path[-1]) and len(path) <= len(pool):
        issuer = by_subject.get(path[-1].issuer)
        if issuer is None or issuer in path:
            break
        path.append(issuer)
    return path


def _reads(path: Sequence[x509.Certificate]) -> str:
    return " <- ".join(name(c) for c in path)


def explain_chain_failure(
    code: str,
    leaf: x509.Certificate,
    sent: Sequence[x509.Certificate],
    anchors: Sequence[x509.Certificate],
    now: datetime,
) -> Failure:
    """The reason and sentence for verdict `code` of `leaf` with the intermediates the device `sent`."""
    path = _path(leaf, [*sent, *anchors])
    reason = CHAIN_REASONS.get(code, Reason.CHAIN_INVALID)
    if code in ("expired", "not_yet_valid", "expired_or_not_yet_valid"):
        return _dates(path, now) or (reason, reason.sentence)
    if code == "chain_incomplete":
        return _no_path(leaf, sent, anchors)
    if code == "chain_untrusted":
        return reason, f"{reason.sentence}: {_reads(path)}; {_same_name(path, anchors)}"
    if code == "weak_signature_algorithm":
        weak = [c for c in path if c.signature_hash_algorithm is not None
                and c.signature_hash_algorithm.name in _WEAK_HASHES]
        if weak:
            algorithm = weak[0].signature_hash_algorithm.name.upper()  # type: ignore[union-attr]
            return reason, (f"{name(weak[0])} is signed with {algorithm}, which the gateway does not accept; "
                            "re-issue it signed with SHA-256")
    if code == "unknown_critical_extension":
        for cert in path:
            unknown = [e for e in cert.extensions if e.critical and isinstance(e.value, x509.UnrecognizedExtension)]
            if unknown:
                return reason, (f"{name(cert)} carries the critical extension {unknown[0].oid.dotted_string}, "
                                "which the gateway does not understand, so it must refuse the certificate")
    if code in ("issuer_not_ca", "chain_too_deep"):
        for child, issuer in itertools.pairwise(path):
            if not _is_ca(issuer):
                return Reason.ISSUER_NOT_CA, (
                    f"{name(child)} is signed by {name(issuer)}, which is not a CA certificate "
                    "(basicConstraints CA:TRUE missing), so it cannot issue certificates")
    if code == "chain_too_deep":
        # cryptography also says "too deep" when a self-signed certificate it cannot use sends the path
        # builder round in circles: that is an unknown CA, not a long chain.
        if not any(c in anchors for c in path):
            return _no_path(leaf, sent, anchors)
        return reason, f"{reason.sentence} (the chain reads {_reads(path)})"
    return reason, f"{reason.sentence} (the chain reads {_reads(path)})"


def chain_cert_expired(cert: x509.Certificate) -> str:
    """The sentence for an expired certificate above the leaf (at CONNECT and when a session is closed)."""
    return f"the chain certificate {name(cert)} expired on {_when(cert.not_valid_after_utc)}"


def _dates(path: Sequence[x509.Certificate], now: datetime) -> Failure | None:
    for cert in path:
        if now > cert.not_valid_after_utc:
            return Reason.CHAIN_EXPIRED, chain_cert_expired(cert)
        if now < cert.not_valid_before_utc:
            return Reason.CHAIN_NOT_YET_VALID, (
                f"the chain certificate {name(cert)} is valid from {_when(cert.not_valid_before_utc)} but the "
                f"gateway's clock says {_when(now)} (check both clocks)"
            )
    return None


def _no_path(leaf: x509.Certificate, sent: Sequence[x509.Certificate],
             anchors: Sequence[x509.Certificate]) -> Failure:
    path = _path(leaf, [*sent, *anchors])
    top = path[-1]
    if any(c in anchors for c in path[1:]):
        return Reason.CHAIN_UNTRUSTED, f"{Reason.CHAIN_UNTRUSTED.sentence}: {_same_name(path, anchors)}"
    if _self_signed(top):
        return Reason.CHAIN_UNKNOWN_CA, (f"the chain ends at the root {name(top)}, which is not a registered CA "
                                         "(register it, or the intermediate the device is issued from, at the hub)")
    issuer = top.issuer.rfc4514_string()
    if not sent:
        return Reason.CHAIN_INCOMPLETE, (f"the device sent only its own certificate, and its issuer {issuer} is not a "
                                         "registered CA: send the intermediate certificates with it (or register "
                                         f"{issuer} at the hub)")
    return Reason.CHAIN_UNKNOWN_CA, (f"the chain the device sent reads {_reads(path)}, and {issuer} above it is not a "
                                     f"registered CA (register {issuer} at the hub, or send the missing intermediate)")


def _same_name(path: Sequence[x509.Certificate], anchors: Sequence[x509.Certificate]) -> str:
    issuers = {c.issuer for c in path}
    known = [a for a in anchors if a.subject in issuers]
    if known:
        return (f"the registered CA {name(known[0])} has the right name but is not the key that signed the chain "
                "(was the CA regenerated under the same name?)")
    return f"the chain reads {_reads(path)}"


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False

"""Why a device would or would not trust a gateway, from the chain the gateway presented.

Pure: the hostname the device dialled, the chain the gateway sent (fetched without verification by
devices/probe.py), the roots in the device's ca-file and `now` go in; an `Explanation` comes out.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from datetime import datetime

from cryptography import x509
from cryptography.x509.oid import NameOID

from devices.failures import Explanation, Reason
from gateway.auth.chain_failure import explain_chain_failure
from gateway.pki import verify_chain

# verify_chain's reason codes that mean "no path from what was sent to a root in ca-file".
_NO_PATH = frozenset({"chain_incomplete", "chain_untrusted", "no_trust_anchor", "chain_too_deep"})
_DATES = frozenset({"expired", "not_yet_valid", "expired_or_not_yet_valid"})


def server_names(cert: x509.Certificate) -> list[str]:
    """The DNS names and IPs a server certificate is for (its SAN; its CN when it has no SAN)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return [*san.get_values_for_type(x509.DNSName), *(str(ip) for ip in san.get_values_for_type(x509.IPAddress))]


def name_matches(name: str, dialled: str) -> bool:
    """RFC 6125: exact (case-insensitive), or a wildcard standing for the one left-most label."""
    try:
        return ipaddress.ip_address(dialled) == ipaddress.ip_address(name)
    except ValueError:
        pass
    name, dialled = name.lower().rstrip("."), dialled.lower().rstrip(".")
    if name.startswith("*."):
        label, _, rest = dialled.partition(".")
        return bool(label) and rest == name[2:]
    return name == dialled


def _subject(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "(empty subject)"


def _sent(presented: Sequence[x509.Certificate]) -> str:
    return " ← ".join(_subject(c) for c in presented)


def _no_path(presented: Sequence[x509.Certificate], roots: Sequence[x509.Certificate]) -> Explanation:
    top = presented[-1]
    if any(r.subject == top.issuer for r in roots):
        needs = (f"ca-file holds a root named {top.issuer.rfc4514_string()}, but not the one that signed this chain "
                 "(was the root regenerated under the same name?)")
    elif top.issuer == top.subject:
        needs = f"it sent its own root {_subject(top)}, which ca-file does not hold"
    else:
        needs = f"the chain needs {top.issuer.rfc4514_string()}, which neither the gateway nor ca-file supplies"
    held = ", ".join(_subject(r) for r in roots) or "nothing"
    return Explanation(Reason.UNTRUSTED_CHAIN,
                       f"the gateway's chain does not lead to a root in ca-file (gateway sent: {_sent(presented)}; "
                       f"{needs}; ca-file holds: {held})")


def diagnose(dialled: str, presented: Sequence[x509.Certificate], roots: Sequence[x509.Certificate],
             now: datetime) -> Explanation:
    """One sentence saying why this device would (or would not) trust this gateway at `now`."""
    if not presented:
        return Explanation(Reason.NO_GATEWAY_CERT, "the gateway presented no certificate")
    leaf = presented[0]
    names = server_names(leaf)
    if not any(name_matches(n, dialled) for n in names):
        listed = ", ".join(names) or "(no names)"
        return Explanation(Reason.HOSTNAME_MISMATCH,
                           f"the gateway's certificate is for {listed}, you dialled {dialled}")
    dated = _dates(presented, leaf, now)
    if dated is not None:
        return dated
    # A root the gateway sends along proves nothing (only ca-file's copy counts), and confuses path building.
    intermediates = [c for c in presented[1:] if c.issuer != c.subject]
    verdict = verify_chain(leaf, intermediates, roots, now=now, purpose="server", hostname=dialled)
    if verdict.ok:
        return Explanation(Reason.GATEWAY_TRUSTED, "the gateway's certificate and chain are fine")
    if verdict.reason in _DATES:
        issuers = {c.issuer for c in presented}
        dated = _dates([r for r in roots if r.subject in issuers], None, now, where="root in ca-file")
        if dated is not None:
            return dated
    if verdict.reason in _NO_PATH:
        return _no_path(presented, roots)
    # cryptography's own words are not for people; say which certificate is wrong, and how.
    _, sentence = explain_chain_failure(verdict.reason, leaf, intermediates, roots, now)
    return Explanation(Reason.INVALID_CHAIN, f"the gateway's chain is invalid: {sentence}")


def _dates(certs: Sequence[x509.Certificate], leaf: x509.Certificate | None, now: datetime,
           where: str = "gateway's chain certificate") -> Explanation | None:
    """The first certificate outside its validity by this device's clock, in words that name the clock."""
    for cert in certs:
        which = "the gateway's certificate" if cert is leaf else f"the {where} {_subject(cert)}"
        if cert.not_valid_after_utc < now:
            return Explanation(Reason.GATEWAY_CERT_EXPIRED,
                               f"{which} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC and this "
                               f"device's clock says {now:%Y-%m-%d %H:%M} UTC: if the clock is right, the gateway "
                               "must renew it; else fix the clock")
        if cert.not_valid_before_utc > now:
            return Explanation(Reason.GATEWAY_CERT_NOT_YET_VALID,
                               f"{which} is not valid until {cert.not_valid_before_utc:%Y-%m-%d %H:%M} "
                               f"UTC and this device's clock says {now:%Y-%m-%d %H:%M} UTC: check the clock")
    return None

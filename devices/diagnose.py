"""Why a TLS connection to the gateway failed, in words, from what the gateway presented.

Pure: the chain the gateway sent (fetched without verification), the hostname the device dialled,
the roots in its ca-file and `now` go in; one sentence comes out.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from datetime import datetime

from cryptography import x509
from cryptography.x509.oid import NameOID

from gateway.pki.chain import verify_chain


def names_of(cert: x509.Certificate) -> list[str]:
    """The DNS names and IPs a server certificate is valid for (SAN; the CN if there is no SAN)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return [*san.get_values_for_type(x509.DNSName), *(str(ip) for ip in san.get_values_for_type(x509.IPAddress))]


def _matches(name: str, dialled: str) -> bool:
    try:
        return ipaddress.ip_address(dialled) == ipaddress.ip_address(name)
    except ValueError:
        pass
    name, dialled = name.lower(), dialled.lower()
    if name.startswith("*."):
        return dialled.split(".", 1)[-1] == name[2:] and "." in dialled
    return name == dialled


def _describe(chain: Sequence[x509.Certificate]) -> str:
    return " <- ".join(c.subject.rfc4514_string() for c in chain)


def diagnose(dialled: str, presented: Sequence[x509.Certificate], roots: Sequence[x509.Certificate],
             now: datetime) -> str:
    """One sentence saying why a device would (or would not) trust this gateway."""
    if not presented:
        return "the gateway presented no certificate"
    leaf = presented[0]
    names = names_of(leaf)
    if not any(_matches(n, dialled) for n in names):
        return f"the gateway's certificate is for {', '.join(names) or '(no names)'}, you dialled {dialled}"
    if leaf.not_valid_after_utc < now:
        return f"the gateway's certificate expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
    if leaf.not_valid_before_utc > now:
        return (f"the gateway's certificate is not valid until {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC; "
                "check this device's clock")
    verdict = verify_chain(leaf, presented[1:], roots, now=now, purpose="server", hostname=dialled)
    if verdict.ok:
        return "the gateway's certificate and chain are fine"
    if verdict.reason in ("chain_incomplete", "chain_untrusted", "no_trust_anchor"):
        return (f"the gateway's chain does not lead to a root in ca-file (gateway sent: {_describe(presented)}; "
                f"ca-file holds: {_describe(roots) or 'nothing'})")
    return f"the gateway's chain is invalid: {verdict.detail}"

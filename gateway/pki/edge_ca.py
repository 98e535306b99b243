"""The Edge CA's life cycle and the gateway's server certificate.

Quickstart keeps a *stable local root* above a renewable Edge CA: renewing the Edge CA never changes
what children trust (IoT Edge's quickstart rotates a self-signed Edge CA, forcing every child to
re-trust). Decisions (`renewal_due`, `server_cert_problem`) are pure; the rest is thin file I/O.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509

from gateway.errors import PKIError
from gateway.pki.ca import CA, cert_pem, is_self_signed
from gateway.pki.chain import verify_chain
from gateway.pki.keys import key_matches_cert, load_private_key, write_file_atomic
from gateway.pki.loading import load_certs

log = logging.getLogger("edgegate.pki")

QUICKSTART_ROOT_DAYS = 3650
SERVER_CERT_MAX_DAYS = 30  # edgeHub's default for issued certs


@dataclass(frozen=True)
class EdgeCAMaterial:
    ca: CA
    cert_path: Path
    key_path: Path
    trust_bundle_path: Path  # the root children must trust
    quickstart: bool


@dataclass(frozen=True)
class ServerCertMaterial:
    chain_path: Path  # leaf + Edge CA + intermediates (no root): what the wire carries
    key_path: Path
    cert: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    issued: bool  # True when this call (re)issued it

    @property
    def not_after(self) -> datetime:
        return self.cert.not_valid_after_utc


def renewal_due(
    not_before: datetime, not_after: datetime, now: datetime, threshold: float, lifetime: timedelta | None = None
) -> bool:
    """True once `threshold` (a fraction, e.g. 0.8) of the lifetime has passed, or outside the window.

    `lifetime` is what the certificate was issued for; a certificate backdated to the clock floor
    (gateway.clock_floor) looks longer-lived than that, and must still be renewed as often.
    """
    if now < not_before or now >= not_after:
        return True
    return now >= _due_at(not_before, not_after, threshold, lifetime)


def _due_at(not_before: datetime, not_after: datetime, threshold: float, lifetime: timedelta | None) -> datetime:
    span = not_after - not_before if lifetime is None else min(not_after - not_before, lifetime)
    return not_after - span * (1 - threshold)


def server_cert_problem(
    cert: x509.Certificate,
    issuer: x509.Certificate,
    hostname: str,
    alt_names: Sequence[str],
    now: datetime,
    threshold: float,
    hold: bool = False,
) -> str | None:
    """Why the stored server cert must be re-issued, or None when it is still right. With `hold` (the
    clock cannot be trusted) its dates are no reason: only a wrong issuer or wrong names are."""
    if cert.issuer != issuer.subject:
        return "its issuer is not the current Edge CA"
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return "it has no subjectAltName"
    present = {str(n) for n in san.get_values_for_type(x509.DNSName)}
    present |= {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    wanted = {hostname, *alt_names}
    if present != wanted:
        return f"its names {sorted(present)} differ from the configured {sorted(wanted)}"
    if not hold and renewal_due(cert.not_valid_before_utc, cert.not_valid_after_utc, now, threshold,
                                timedelta(days=SERVER_CERT_MAX_DAYS)):
        return f"it is due for renewal (valid until {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC)"
    return None


# ---- quickstart -------------------------------------------------------------------------------


def quickstart_paths(state_dir: Path) -> tuple[Path, Path, Path, Path]:
    """Root cert, root key, Edge CA cert, Edge CA key of the quickstart PKI under `state_dir`."""
    pki = state_dir / "pki"
    return pki / "quickstart-root.pem", pki / "quickstart-root.key", pki / "edge-ca.pem", pki / "edge-ca.key"


def server_cert_paths(state_dir: Path) -> tuple[Path, Path]:
    server_dir = state_dir / "pki" / "server"
    return server_dir / "server.pem", server_dir / "server.key"


def ensure_quickstart_edge_ca(
    state_dir: Path,
    *,
    expiry_days: int = 90,
    threshold: float = 0.8,
    now: datetime,
    hold: bool = False,
    not_before: datetime | None = None,
) -> EdgeCAMaterial:
    """Create (first start), reuse (restart) or renew (due) the quickstart Edge CA under a stable root.

    `hold`: the clock cannot be trusted, so a CA that looks due is kept (only a missing one is made);
    `not_before` backdates what is issued (see gateway.clock_floor.issue_not_before).
    """
    root_cert, root_key, ca_cert, ca_key = quickstart_paths(state_dir)
    log.warning("quickstart Edge CA in use: fine for trials, not for production "
                "(configure [edge_ca] cert and pk from your own PKI)")
    if root_cert.exists() and root_key.exists():
        root = CA.load(root_cert, root_key)
    else:
        root = CA.create_root("edgegate quickstart root", days=QUICKSTART_ROOT_DAYS, path_length=1, now=now,
                              not_before=not_before)
        root.private_key_pem.write_to_path(root_key, private=True)
        root.cert_pem.write_to_path(root_cert)
        log.info("created quickstart root %s (give this file to child devices)", root_cert)
    edge: CA | None = None
    if ca_cert.exists() and ca_key.exists():
        edge = CA.load(ca_cert, ca_key)
        due = renewal_due(edge.cert.not_valid_before_utc, edge.cert.not_valid_after_utc, now, threshold,
                          timedelta(days=expiry_days))
        if edge.cert.issuer != root.cert.subject or (due and not hold):
            log.info("renewing quickstart Edge CA (valid until %s) under the same root",
                     edge.cert.not_valid_after_utc)
            edge = None
    if edge is None:
        edge = root.create_child_ca("edgegate quickstart Edge CA", days=expiry_days, path_length=0, now=now,
                                    not_before=not_before)
        edge.private_key_pem.write_to_path(ca_key, private=True)
        write_file_atomic(ca_cert, cert_pem(edge.cert))
    else:
        edge = CA(edge.cert, edge.private_key, (root.cert,))
    return EdgeCAMaterial(edge, ca_cert, ca_key, root_cert, quickstart=True)


# ---- provided ---------------------------------------------------------------------------------


def validate_provided_edge_ca(
    cert_path: Path, key_path: Path, trust_bundle_path: Path, *, now: datetime
) -> EdgeCAMaterial:
    """Check a user-provided Edge CA; each problem gets its own PKIError sentence."""
    certs = load_certs(cert_path)
    edge_cert = certs[0]
    key = load_private_key(key_path)
    subject = edge_cert.subject.rfc4514_string()
    try:
        bc = edge_cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    if bc is None or not bc.ca:
        raise PKIError(f"{cert_path}: '{subject}' is not a CA certificate (basicConstraints CA:TRUE missing); "
                       "an Edge CA must be able to issue the gateway's server certificate")
    try:
        ku = edge_cert.extensions.get_extension_for_class(x509.KeyUsage).value
        if not ku.key_cert_sign:
            raise PKIError(f"{cert_path}: '{subject}' lacks keyUsage keyCertSign, so it cannot sign certificates")
    except x509.ExtensionNotFound:
        pass
    if not key_matches_cert(key, edge_cert.public_key()):
        raise PKIError(f"{key_path} is not the private key of {cert_path} ('{subject}')")
    if now < edge_cert.not_valid_before_utc:
        raise PKIError(f"{cert_path}: Edge CA is not valid until {edge_cert.not_valid_before_utc:%Y-%m-%d %H:%M} "
                       f"UTC (now is {now:%Y-%m-%d %H:%M} UTC: check the clock)")
    if now >= edge_cert.not_valid_after_utc:
        raise PKIError(f"{cert_path}: Edge CA expired on {edge_cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    roots = load_certs(trust_bundle_path)
    intermediates = [c for c in certs[1:] if not is_self_signed(c)]
    probe = CA(edge_cert, key).issue_server_cert("edge-ca-probe.invalid", days=1, now=now)
    verdict = verify_chain(probe.cert, [edge_cert, *intermediates], roots, now=now, purpose="server",
                           hostname="edge-ca-probe.invalid")
    if not verdict.ok:
        missing = _missing_issuer(edge_cert, intermediates, roots)
        raise PKIError(f"{cert_path}: the Edge CA's chain does not reach {trust_bundle_path}: {missing} "
                       f"({verdict.reason}); put the intermediates after the Edge CA in {cert_path.name}")
    chain = tuple(c for c in verdict.chain[2:])
    return EdgeCAMaterial(CA(edge_cert, key, chain), cert_path, key_path, trust_bundle_path, quickstart=False)


def _missing_issuer(cert: x509.Certificate, intermediates: Sequence[x509.Certificate],
                    roots: Sequence[x509.Certificate]) -> str:
    known = {c.subject: c for c in [*intermediates, *roots]}
    current = cert
    for _ in range(10):
        if current.issuer in {r.subject for r in roots}:
            return "the chain is complete but a signature or constraint failed"
        nxt = known.get(current.issuer)
        if nxt is None:
            return f"no certificate for issuer '{current.issuer.rfc4514_string()}'"
        current = nxt
    return "the chain is too long"


# ---- server certificate -----------------------------------------------------------------------


def ensure_server_cert(
    state_dir: Path,
    edge_ca: CA,
    hostname: str,
    alt_names: Sequence[str] = (),
    *,
    now: datetime,
    threshold: float = 0.8,
    days: int = SERVER_CERT_MAX_DAYS,
    hold: bool = False,
    not_before: datetime | None = None,
) -> ServerCertMaterial:
    """Reuse the stored server cert while it is right; otherwise issue one (≤ 30 days, ≤ the Edge CA).
    `hold` and `not_before` as for `ensure_quickstart_edge_ca`."""
    chain_path, key_path = server_cert_paths(state_dir)
    if chain_path.exists() and key_path.exists():
        certs = load_certs(chain_path)
        key = load_private_key(key_path)
        problem = server_cert_problem(certs[0], edge_ca.cert, hostname, alt_names, now, threshold, hold)
        if problem is None and key_matches_cert(key, certs[0].public_key()):
            return ServerCertMaterial(chain_path, key_path, certs[0], tuple(certs[1:]), issued=False)
        log.info("re-issuing the server certificate: %s", problem or "its key does not match")
    lifetime = min(days, SERVER_CERT_MAX_DAYS)
    issued = edge_ca.issue_server_cert(hostname, *alt_names, days=lifetime, now=now, not_before=not_before)
    issued.private_key_pem.write_to_path(key_path, private=True)
    write_file_atomic(chain_path, issued.fullchain_pem().bytes)
    chain = tuple(c for c in issued.chain if not is_self_signed(c))
    log.info("issued server certificate for %s valid until %s UTC", ", ".join([hostname, *alt_names]),
             f"{issued.cert.not_valid_after_utc:%Y-%m-%d %H:%M}")
    return ServerCertMaterial(chain_path, key_path, issued.cert, chain, issued=True)


def next_renewal_check(cert: x509.Certificate, threshold: float, now: datetime) -> timedelta:
    """How long until the server cert is due (at least a minute, at most six hours between checks)."""
    due_at = _due_at(cert.not_valid_before_utc, cert.not_valid_after_utc, threshold,
                     timedelta(days=SERVER_CERT_MAX_DAYS))
    return max(timedelta(minutes=1), min(due_at - now, timedelta(hours=6)))

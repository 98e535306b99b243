"""`edgegate check`'s EST part: reach the EST server with its certificate verified, have the gateway's
credentials accepted, and say how long each EST-issued certificate has left. `probe` does the looking,
the other functions judge (pure, `now` passed in)."""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path

from cryptography import x509

from gateway.checks import CheckResult, fail, ok, warn
from gateway.config import Config
from gateway.config_est import EstAutoRenewConfig, EstConfig
from gateway.errors import EstError, PKIError
from gateway.est.client import ClientAuth, EstClient
from gateway.est.schedule import ExpiryLevel, describe_left, expiry_level
from gateway.pki import load_certs

CHECK_TIMEOUT = 5.0


def credentials(est: EstConfig, now: datetime) -> ClientAuth:
    """What the gateway would authenticate with right now: its identity while valid, else bootstrap."""
    try:
        leaf = load_certs(est.identity_cert)[0] if est.identity_cert.exists() else None
    except PKIError:
        leaf = None
    if leaf is not None and leaf.not_valid_before_utc <= now < leaf.not_valid_after_utc:
        return ClientAuth("identity", est.identity_cert, est.identity_pk)
    if est.bootstrap_identity_cert is not None:
        return ClientAuth("bootstrap", est.bootstrap_identity_cert, est.bootstrap_identity_pk)
    return ClientAuth("basic")


async def _probe(est: EstConfig, auth: ClientAuth) -> tuple[str | None, str | None]:
    client = EstClient(est.trusted_certs, est.username, est.password, timeout=CHECK_TIMEOUT)
    try:
        await client.cacerts(est.url)
    except (EstError, PKIError) as exc:
        return f"{getattr(exc, 'reason', 'unusable')}: {exc}", None
    try:
        await client.csrattrs(est.url, auth)
    except (EstError, PKIError) as exc:
        return None, f"{getattr(exc, 'reason', 'unusable')}: {exc}"
    return None, None


def est_results(config: Config, now: datetime) -> list[CheckResult]:
    """Every EST check for `config` (which has [cert_issuance.est])."""
    est = config.est
    assert est is not None
    auth = credentials(est, now)
    reach_error, auth_error = asyncio.run(_probe(est, auth))
    results = [server_reachable(est.url, reach_error)]
    if reach_error is None:
        results.append(credentials_accepted(est.url, auth.kind, auth_error))
    results.append(issued_cert("EST identity certificate", est.identity_cert, est.identity_auto_renew, now))
    if config.edge_ca.est is not None and config.edge_ca.cert is not None:
        results.append(issued_cert("EST Edge CA", config.edge_ca.cert, config.edge_ca.est.auto_renew, now))
    return results


def server_reachable(url: str, error: str | None) -> CheckResult:
    title = f"EST server {url} reachable with a trusted certificate"
    return ok(title, "cacerts answered over verified TLS") if error is None else fail(title, error)


def credentials_accepted(url: str, kind: str, error: str | None) -> CheckResult:
    title = "EST server accepts the gateway's credentials"
    if error is None:
        return ok(title, f"the {kind} {'credentials' if kind == 'basic' else 'certificate'} authenticated")
    return fail(title, error)


def issued_cert(what: str, path: Path, renew: EstAutoRenewConfig, now: datetime) -> CheckResult:
    """Days left on an EST-issued certificate, warning when its renewal is overdue or it expired."""
    title = f"{what} is valid"
    if not path.exists():
        return warn(title, f"{path} not enrolled yet; `edgegate run` enrolls it over EST")
    try:
        leaf: x509.Certificate = load_certs(path)[0]
    except PKIError as exc:
        return fail(title, str(exc))
    level = expiry_level(leaf.not_valid_before_utc, leaf.not_valid_after_utc, renew.threshold / 100, now)
    detail = f"{describe_left(leaf.not_valid_after_utc, now)} (until {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC)"
    if level is ExpiryLevel.OK:
        return ok(title, detail)
    if level is ExpiryLevel.EXPIRED:
        return warn(title, f"{detail}; the gateway re-enrolls with the bootstrap certificate when EST answers")
    return warn(title, f"{detail}; {level.value}: renewal is due and has not succeeded yet (see the log)")

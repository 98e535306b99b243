"""`edgegate check`'s checks, like `iotedge check`: each returns a CheckResult, none prints.

The judgements (days left, names, chain) are pure functions of loaded data and `now`; the few checks
that must touch the outside world (DNS, the hub, the database) say so in their names.
"""

from __future__ import annotations

import enum
import os
import socket
import ssl
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509

from gateway.config import Config
from gateway.errors import EdgegateError
from gateway.pki import load_certs, verify_chain
from gateway.pki.edge_ca import server_cert_problem
from gateway.tls.contexts import build_hub_client_context

# iotedge check warns when a certificate has less than a week left.
WARN_DAYS = 7


class Status(enum.Enum):
    OK = "ok"
    WARN = "warning"
    FAIL = "error"

    @property
    def mark(self) -> str:
        return {"ok": "✔", "warning": "⚠", "error": "✖"}[self.value]


@dataclass(frozen=True, slots=True)
class CheckResult:
    status: Status
    title: str
    detail: str = ""


def ok(title: str, detail: str = "") -> CheckResult:
    return CheckResult(Status.OK, title, detail)


def warn(title: str, detail: str) -> CheckResult:
    return CheckResult(Status.WARN, title, detail)


def fail(title: str, detail: str) -> CheckResult:
    return CheckResult(Status.FAIL, title, detail)


def key_file_mode(path: Path, mode: int) -> CheckResult:
    title = f"private key {path} is readable only by its owner"
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        return fail(title, f"mode is {stat.S_IMODE(mode):04o}; run: chmod 600 {path}")
    return ok(title)


def validity(what: str, cert: x509.Certificate, now: datetime, *, quickstart: bool = False) -> CheckResult:
    title = f"{what} is valid"
    left = cert.not_valid_after_utc - now
    if now < cert.not_valid_before_utc:
        return fail(title, f"not valid until {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC: check the clock")
    if left.total_seconds() <= 0:
        return fail(title, f"expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    detail = f"{left.days} days left (until {cert.not_valid_after_utc:%Y-%m-%d})"
    if left.days < WARN_DAYS:
        return warn(title, detail + "; renew it now")
    if quickstart:
        return warn(title, detail + "; quickstart Edge CA: fine for trials, not for production")
    return ok(title, detail)


def server_names(cert: x509.Certificate, issuer: x509.Certificate, hostname: str, alt_names: Sequence[str],
                 now: datetime) -> CheckResult:
    title = f"server certificate is for {hostname}"
    problem = server_cert_problem(cert, issuer, hostname, alt_names, now, threshold=1.0)
    if problem is None:
        return ok(title)
    return warn(title, f"{problem}; the gateway re-issues it at start")


def chain_to_bundle(chain: Sequence[x509.Certificate], roots: Sequence[x509.Certificate], hostname: str,
                    now: datetime) -> CheckResult:
    title = "server certificate chain verifies against the trust bundle"
    verdict = verify_chain(chain[0], chain[1:], roots, now=now, purpose="server", hostname=hostname)
    if verdict.ok:
        return ok(title, " <- ".join(c.subject.rfc4514_string() for c in verdict.chain))
    return fail(title, f"{verdict.reason}: {verdict.detail}")


def hostname_resolves(hostname: str) -> CheckResult:
    title = f"{hostname} resolves on this machine"
    try:
        addresses = sorted({str(info[4][0]) for info in socket.getaddrinfo(hostname, None)})
    except OSError as exc:
        return warn(title, f"{exc}; devices must resolve it (DNS or /etc/hosts) to the gateway's address")
    return ok(title, ", ".join(addresses))


def hub_reachable(config: Config, timeout: float = 3.0) -> CheckResult:
    hub = config.hub
    if hub is None:
        return warn("hub reachable", "not configured ([hub] is missing): the gateway serves its cache only")
    title = f"hub {hub.hostname} reachable at {hub.url} with a trusted certificate"
    parts = urlsplit(hub.url)
    try:
        ctx = build_hub_client_context(hub.trust_bundle_cert, hub.identity_cert, hub.identity_pk)
        with socket.create_connection((parts.hostname or hub.hostname, parts.port or 443), timeout=timeout) as raw, \
                ctx.wrap_socket(raw, server_hostname=hub.hostname) as tls:
            return ok(title, f"{tls.version()}, hostname and chain verified")
    except ssl.SSLCertVerificationError as exc:
        return fail(title, f"the hub's certificate is not trusted: {exc.verify_message}")
    except (OSError, EdgegateError) as exc:
        return fail(title, str(exc))


def database(url: str) -> CheckResult:
    from gateway.store.db import database_exists, migration_status, redacted

    title = f"database {redacted(url)} is at the latest migration"
    try:
        if not database_exists(url):
            return warn(title, "not created yet; `edgegate run` or `edgegate db upgrade` creates it")
        current, head = migration_status(url)
    except EdgegateError as exc:
        return fail(title, str(exc))
    if current != head:
        return warn(title, f"at {current}, latest is {head}; run `edgegate db upgrade` (run does it too)")
    return ok(title, head)


def files_exist(paths: Sequence[tuple[str, Path | None]]) -> list[CheckResult]:
    results = []
    for what, path in paths:
        if path is None:
            continue
        if not path.exists():
            results.append(fail(f"{what} exists", f"{path} is missing"))
            continue
        results.append(ok(f"{what} exists", str(path)))
        if what.endswith("key"):
            results.append(key_file_mode(path, os.stat(path).st_mode))
    return results


def load_first(path: Path) -> x509.Certificate:
    return load_certs(path)[0]

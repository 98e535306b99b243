"""The gateway's face to its devices: the Edge CA (quickstart or provided) and the server certificate
it issues for `hostname`, kept renewed. Thin I/O around the pure PKI decisions in gateway.pki.edge_ca.

Nothing is issued or replaced on a clock that cannot be trusted (gateway.clock_floor): the keeper holds
what it has and serves with it, and looks again as soon as the clock watch says the clock moved.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509

from gateway.clock_floor import ClockVerdict, issue_not_before
from gateway.clock_watch import ClockWatch
from gateway.config import Config
from gateway.errors import PKIError
from gateway.pki import is_self_signed, load_certs
from gateway.pki.ca import BACKDATE
from gateway.pki.edge_ca import (
    EdgeCAMaterial,
    ServerCertMaterial,
    ensure_quickstart_edge_ca,
    ensure_server_cert,
    next_renewal_check,
    quickstart_paths,
    server_cert_paths,
    validate_provided_edge_ca,
)
from gateway.tls.contexts import ServerContextHolder

log = logging.getLogger("edgegate.pki")


@dataclass(frozen=True, slots=True)
class IssuePlan:
    """How certificates may be made at this moment: `now` to date them, `not_before` to backdate them
    to, and `hold` when the clock cannot be trusted (keep what is held; make only what is missing)."""

    now: datetime
    not_before: datetime | None = None
    hold: bool = False

    @classmethod
    def of(cls, verdict: ClockVerdict) -> IssuePlan:
        return cls(verdict.now, issue_not_before(verdict, BACKDATE), hold=not verdict.trusted)


def _plan(plan: IssuePlan | datetime) -> IssuePlan:
    return plan if isinstance(plan, IssuePlan) else IssuePlan(plan)


def load_edge_ca(config: Config, plan: IssuePlan | datetime) -> EdgeCAMaterial:
    """The Edge CA the config names (validated), or the quickstart one under state_dir (created/renewed)."""
    plan = _plan(plan)
    ec = config.edge_ca
    threshold = ec.auto_renew.threshold / 100
    if ec.cert is None or ec.pk is None:
        return ensure_quickstart_edge_ca(
            config.state_dir, expiry_days=max(1, ec.auto_generated_edge_ca_expiry.days), threshold=threshold,
            now=plan.now, hold=plan.hold, not_before=plan.not_before,
        )
    if config.trust_bundle_cert is None:
        raise PKIError(f"{config.source}: [trust_bundle_cert] is required with a provided Edge CA")
    return validate_provided_edge_ca(ec.cert, ec.pk, config.trust_bundle_cert, now=plan.now)


def server_cert(config: Config, edge: EdgeCAMaterial, plan: IssuePlan | datetime) -> ServerCertMaterial:
    plan = _plan(plan)
    return ensure_server_cert(config.state_dir, edge.ca, config.hostname, config.alt_names, now=plan.now,
                              threshold=config.edge_ca.auto_renew.threshold / 100, hold=plan.hold,
                              not_before=plan.not_before)


def held_certificates(config: Config) -> list[x509.Certificate]:
    """Every certificate the gateway holds on disk (Edge CA, server cert, bundles, identity): evidence for
    the clock floor. Files that are missing or unreadable are skipped; loading them is someone else's job."""
    root, _, edge, _ = quickstart_paths(config.state_dir)
    paths: list[Path | None] = [root, edge, server_cert_paths(config.state_dir)[0], config.edge_ca.cert,
                                config.trust_bundle_cert]
    if config.hub is not None:
        paths += [config.hub.identity_cert, config.hub.trust_bundle_cert]
    certs: list[x509.Certificate] = []
    for path in paths:
        if path is not None and path.exists():
            try:
                certs += load_certs(path)
            except PKIError:
                continue
    return certs


def describe_chain(material: ServerCertMaterial) -> str:
    """`CN=leaf <- CN=Edge CA <- ...`: what a device sees on the wire, for the start-up log line."""
    names = [material.cert.subject.rfc4514_string()]
    names += [c.subject.rfc4514_string() for c in material.chain if not is_self_signed(c)]
    return " <- ".join(names)


class ServerCertKeeper:
    """Renews the Edge CA (quickstart) and the server cert before they are due, and hot-swaps the TLS
    context so new connections get the new chain while existing sessions stay up."""

    def __init__(self, config: Config, clock: Callable[[], datetime], watch: ClockWatch | None = None) -> None:
        self.config, self.clock = config, clock
        self.watch = watch or ClockWatch(config.state_dir, tolerance=config.auth.clock_skew_tolerance, wall=clock)
        self.watch.hold(held_certificates(config))
        self.watch.tick()
        plan = self.issue_plan()
        self.edge = load_edge_ca(config, plan)
        self.server = server_cert(config, self.edge, plan)
        self.watch.hold([self.edge.ca.cert, self.server.cert])
        self.contexts = ServerContextHolder(self.server.chain_path, self.server.key_path)
        self.watch.on_change(self._clock_changed)

    def issue_plan(self) -> IssuePlan:
        verdict = self.watch.check()
        if not verdict.trusted:
            log.info("clock not trusted (%s): holding the Edge CA and server certificate as they are",
                     verdict.sentence)
        return IssuePlan.of(verdict)

    def _clock_changed(self, verdict: ClockVerdict, jump: timedelta | None) -> None:
        if verdict.trusted:
            self._renew_logged()

    async def run(self) -> None:
        threshold = self.config.edge_ca.auto_renew.threshold / 100
        while True:
            wait = next_renewal_check(self.server.cert, threshold, self.watch.now())
            await asyncio.sleep(wait.total_seconds())
            self._renew_logged()

    def _renew_logged(self) -> None:
        try:
            self.renew_now()
        except (PKIError, ValueError) as exc:
            # ValueError: an Edge CA that expired (EST unreachable) cannot issue; the loop must live on.
            log.error("server certificate renewal failed, keeping the current one: %s", exc)

    def adopt_edge_ca(self, edge: EdgeCAMaterial) -> None:
        """Use a renewed Edge CA (EST) at once: issue a server cert from it and swap it in for new
        connections; devices already connected keep their sessions. Raises PKIError, keeping the old."""
        material = ensure_server_cert(self.config.state_dir, edge.ca, self.config.hostname, self.config.alt_names,
                                      now=self.clock(), threshold=0.0)  # 0: due at once, whatever its dates
        self.contexts.reload(material.chain_path, material.key_path)
        self.edge, self.server = edge, material
        log.info("new Edge CA in use, server certificate re-issued for new connections: %s", describe_chain(material))

    def renew_now(self) -> bool:
        """Re-check and re-issue what is due; True when a new server cert was swapped in. Does nothing
        while the clock cannot be trusted."""
        verdict = self.watch.check()
        if not verdict.trusted:
            log.debug("renewal check skipped: %s", verdict.sentence)
            return False
        plan = IssuePlan.of(verdict)
        if self.edge.quickstart:
            self.edge = load_edge_ca(self.config, plan)
        material = server_cert(self.config, self.edge, plan)
        if not material.issued:
            return False
        self.contexts.reload(material.chain_path, material.key_path)
        self.server = material
        self.watch.hold([self.edge.ca.cert, material.cert])
        log.info("new server certificate in use for new connections: %s", describe_chain(material))
        return True

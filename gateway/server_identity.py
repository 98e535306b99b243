"""The gateway's face to its devices: the Edge CA (quickstart or provided) and the server certificate
it issues for `hostname`, kept renewed. Thin I/O around the pure PKI decisions in gateway.pki.edge_ca."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime

from gateway.config import Config
from gateway.errors import PKIError
from gateway.pki import is_self_signed
from gateway.pki.edge_ca import (
    EdgeCAMaterial,
    ServerCertMaterial,
    ensure_quickstart_edge_ca,
    ensure_server_cert,
    next_renewal_check,
    validate_provided_edge_ca,
)
from gateway.tls.contexts import ServerContextHolder

log = logging.getLogger("edgegate.pki")


def load_edge_ca(config: Config, now: datetime) -> EdgeCAMaterial:
    """The Edge CA the config names (validated), or the quickstart one under state_dir (created/renewed)."""
    ec = config.edge_ca
    threshold = ec.auto_renew.threshold / 100
    if ec.cert is None or ec.pk is None:
        return ensure_quickstart_edge_ca(
            config.state_dir, expiry_days=max(1, ec.auto_generated_edge_ca_expiry.days), threshold=threshold, now=now
        )
    if config.trust_bundle_cert is None:
        raise PKIError(f"{config.source}: [trust_bundle_cert] is required with a provided Edge CA")
    return validate_provided_edge_ca(ec.cert, ec.pk, config.trust_bundle_cert, now=now)


def server_cert(config: Config, edge: EdgeCAMaterial, now: datetime) -> ServerCertMaterial:
    return ensure_server_cert(config.state_dir, edge.ca, config.hostname, config.alt_names, now=now,
                              threshold=config.edge_ca.auto_renew.threshold / 100)


def describe_chain(material: ServerCertMaterial) -> str:
    """`CN=leaf <- CN=Edge CA <- ...`: what a device sees on the wire, for the start-up log line."""
    names = [material.cert.subject.rfc4514_string()]
    names += [c.subject.rfc4514_string() for c in material.chain if not is_self_signed(c)]
    return " <- ".join(names)


class ServerCertKeeper:
    """Renews the Edge CA (quickstart) and the server cert before they are due, and hot-swaps the TLS
    context so new connections get the new chain while existing sessions stay up."""

    def __init__(self, config: Config, clock: Callable[[], datetime]) -> None:
        self.config, self.clock = config, clock
        self.edge = load_edge_ca(config, clock())
        self.server = server_cert(config, self.edge, clock())
        self.contexts = ServerContextHolder(self.server.chain_path, self.server.key_path)

    async def run(self) -> None:
        threshold = self.config.edge_ca.auto_renew.threshold / 100
        while True:
            wait = next_renewal_check(self.server.cert, threshold, self.clock())
            await asyncio.sleep(wait.total_seconds())
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
        """Re-check and re-issue what is due; True when a new server cert was swapped in."""
        now = self.clock()
        if self.edge.quickstart:
            self.edge = load_edge_ca(self.config, now)
        material = server_cert(self.config, self.edge, now)
        if not material.issued:
            return False
        self.contexts.reload(material.chain_path, material.key_path)
        self.server = material
        log.info("new server certificate in use for new connections: %s", describe_chain(material))
        return True

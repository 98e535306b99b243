"""Putting a renewed EST certificate to work without a restart; each adopter answers "worked",
"rejected" (roll back to the previous pair) or "unknown" (try again later, keep the previous pair)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from gateway.config import HubConfig
from gateway.errors import EstRejected, EstUnavailable, HubRejected, HubUnavailable, PKIError
from gateway.est.client import ClientAuth
from gateway.est.keeper import Adopt, EstKeeper
from gateway.hub.client import HubClient
from gateway.pki.keeper import ServerCertKeeper, load_edge_ca
from gateway.tls.contexts import build_hub_client_context

log = logging.getLogger("edgegate.est")


def hub_identity(hub_client: HubClient, hub: HubConfig,
                 then: Callable[[], Awaitable[None]] | None = None) -> Adopt:
    """The hub link presents the identity on disk from the next request; it worked once the hub answers.
    `then` runs after that (the runtime restarts a sync loop that is backing off from a refusal)."""

    async def adopt() -> str:
        try:
            hub_client.use_ssl_context(build_hub_client_context(hub.trust_bundle_cert, hub.identity_cert,
                                                                hub.identity_pk))
            await hub_client.cas()
        except (PKIError, HubRejected) as exc:
            log.error("the hub did not accept the new identity: %s", exc)
            return "rejected"
        except HubUnavailable as exc:
            log.warning("new identity in use; the hub cannot confirm it yet: %s", exc)
            return "unknown"
        log.info("the hub accepted the new identity certificate")
        if then is not None:
            await then()
        return "worked"

    return adopt


def est_identity(keeper: EstKeeper) -> Adopt:
    """Without a hub, the identity worked once the EST server accepts it as a client certificate."""

    async def adopt() -> str:
        store = keeper.identity.store
        try:
            await keeper.client.csrattrs(keeper.est.url, ClientAuth("identity", store.cert, store.key))
        except EstRejected:
            return "rejected"
        except EstUnavailable:
            return "unknown"
        return "worked"

    return adopt


def edge_ca(server: ServerCertKeeper) -> Adopt:
    """A renewed Edge CA re-issues the server cert and swaps it in for new device connections."""

    async def adopt() -> str:
        try:
            server.adopt_edge_ca(load_edge_ca(server.config, server.clock()))
        except PKIError as exc:
            log.error("the new Edge CA could not be used: %s", exc)
            return "rejected"
        return "worked"

    return adopt

"""Is the TLS peer the gateway named in the URL? A pure decision over the registration and thumbprints.

The TLS layer has already checked that the client certificate chains to something the hub trusts
(a registered CA or a registered identity cert) and that the client holds its key. What is left is
the part IoT Hub does for a thumbprint-authenticated edge device: compare the cert's SHA-256 or
SHA-1 thumbprint with the gateway's registered primary or secondary thumbprint.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass

from hub_mock.registry import GatewayRegistration


class GatewayAuthReason(enum.Enum):
    OK = "ok"
    NO_CLIENT_CERTIFICATE = "no_client_certificate"
    UNKNOWN_GATEWAY = "unknown_gateway"
    THUMBPRINT_MISMATCH = "thumbprint_mismatch"
    IDENTITY_EXPIRED = "identity_expired"  # an EST identity (hub_mock.est_auth) past its dates


@dataclass(frozen=True, slots=True)
class PeerThumbprints:
    sha256: str
    sha1: str

    @classmethod
    def of_der(cls, der: bytes) -> PeerThumbprints:
        return cls(hashlib.sha256(der).hexdigest(), hashlib.sha1(der, usedforsecurity=False).hexdigest())


@dataclass(frozen=True, slots=True)
class GatewayAuthDecision:
    ok: bool
    reason: GatewayAuthReason
    message: str


def authenticate_gateway(
    gateway_id: str, registration: GatewayRegistration | None, peer: PeerThumbprints | None
) -> GatewayAuthDecision:
    """Accept the peer only if it presented the identity cert registered for `gateway_id`."""
    if peer is None:
        return GatewayAuthDecision(
            False, GatewayAuthReason.NO_CLIENT_CERTIFICATE, "present the gateway's identity certificate"
        )
    if registration is None:
        return GatewayAuthDecision(
            False,
            GatewayAuthReason.UNKNOWN_GATEWAY,
            f"gateway {gateway_id} is not registered in this hub (hub-mock gateways add {gateway_id} ...)",
        )
    registered = {registration.primary_thumbprint, registration.secondary_thumbprint} - {None}
    if peer.sha256 in registered or peer.sha1 in registered:
        return GatewayAuthDecision(True, GatewayAuthReason.OK, f"gateway {gateway_id} authenticated")
    return GatewayAuthDecision(
        False,
        GatewayAuthReason.THUMBPRINT_MISMATCH,
        f"the client certificate (SHA-256 {peer.sha256}) is not the identity registered for gateway "
        f"{gateway_id}",
    )

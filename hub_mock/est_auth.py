"""X.509 CA authentication of the gateway itself: an identity cert the EST CA issued, with CN = the
gateway id, authenticates a registered gateway whatever thumbprint it was registered with, so a
renewed identity never needs re-registration. Pure: the caller passes the peer cert and `now`."""

from __future__ import annotations

from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hub_mock.identity import GatewayAuthDecision, GatewayAuthReason
from hub_mock.registry import GatewayRegistration


def authenticate_est_gateway(
    gateway_id: str, registration: GatewayRegistration | None, peer: x509.Certificate | None,
    est_ca: x509.Certificate | None, now: datetime,
) -> GatewayAuthDecision | None:
    """An OK decision when `peer` is an EST identity of `gateway_id`; None to fall back to thumbprints."""
    if registration is None or peer is None or est_ca is None or peer.issuer != est_ca.subject:
        return None
    names = [str(a.value) for a in peer.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if names != [gateway_id]:
        return None
    if not peer.not_valid_before_utc <= now < peer.not_valid_after_utc:
        # A kept-alive TLS connection can outlive the certificate it was opened with.
        return GatewayAuthDecision(False, GatewayAuthReason.IDENTITY_EXPIRED,
                                   f"the EST identity of gateway {gateway_id} is outside its dates "
                                   f"(until {peer.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC): renew it")
    try:
        eku = peer.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        if ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
            return None
        peer.verify_directly_issued_by(est_ca)
    except (x509.ExtensionNotFound, ValueError, TypeError, InvalidSignature):
        return None
    return GatewayAuthDecision(True, GatewayAuthReason.OK, f"gateway {gateway_id} authenticated by its EST identity")

"""authenticate(): may this TLS peer be this device? A pure function of frozen data and `now`.

Rules follow edgeHub's (shared/REFERENCE.md) and are stricter where it is lax: the username may not
name another device, a thumbprint device's certificate dates are checked, and a CA device's whole
chain is verified with cryptography's x509.verification (CA flags, path length, dates, EKU).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.auth.chain_failure import explain_chain_failure
from gateway.auth.identity import username_device, validate_device_id
from gateway.auth.reasons import Reason
from gateway.pki.chain import verify_chain
from gateway.pki.thumbprint import thumbprint_sha256
from gateway.records import AuthType, DeviceRecord, PeerIdentity, TrustAnchors


@dataclass(frozen=True, slots=True)
class ConnectClaim:
    """Who the CONNECT packet says the device is."""

    client_id: str
    username: str | None = None


@dataclass(frozen=True, slots=True)
class AuthPolicy:
    """The gateway-wide inputs of a decision.

    `cache_fresh` is False when the hub has been unreachable for longer than `offline_trust` allows.
    """

    gateway_id: str
    anchors: TrustAnchors
    clock_skew: timedelta = timedelta(minutes=5)
    cache_fresh: bool = True


@dataclass(frozen=True, slots=True)
class AuthDecision:
    """The verdict. `message` is for people; `detail` is the library's own words, for the debug log only;
    `anchor` is the SHA-256 thumbprint of the trust anchor a CA device's chain reached."""

    ok: bool
    device_id: str
    reason: Reason
    message: str
    thumbprint: str | None = None
    detail: str = ""
    anchor: str | None = None


def authenticate(
    peer: PeerIdentity, claim: ConnectClaim, record: DeviceRecord | None, policy: AuthPolicy, now: datetime
) -> AuthDecision:
    """Decide whether `peer` may connect as `claim.client_id`, given the cached `record`."""
    device_id = claim.client_id

    def refuse(reason: Reason, message: str | None = None, detail: str = "") -> AuthDecision:
        return AuthDecision(False, device_id, reason, message or reason.sentence, peer.sha256, detail)

    problem = validate_device_id(device_id)
    if problem is not None:
        return refuse(Reason.CLIENT_ID_INVALID, problem)
    well_formed, named = username_device(claim.username)
    if not well_formed:
        return refuse(Reason.USERNAME_INVALID, f"username {claim.username!r}: {Reason.USERNAME_INVALID.sentence}")
    if named is not None and named != device_id:
        return refuse(Reason.USERNAME_MISMATCH, f"username names device {named!r} but the client id is {device_id!r}")
    leaf = peer.leaf
    if leaf is None:
        return refuse(Reason.NO_CLIENT_CERT)
    if not policy.cache_fresh:
        return refuse(Reason.CACHE_TOO_OLD)
    if record is None:
        return refuse(Reason.UNKNOWN_DEVICE, f"device {device_id!r} {Reason.UNKNOWN_DEVICE.sentence[11:]}")
    if record.parent != policy.gateway_id:
        parent = record.parent or "no gateway"
        return refuse(Reason.OUT_OF_SCOPE, f"device {device_id!r} is a child of {parent!r}, not of "
                                           f"this gateway {policy.gateway_id!r}")
    if not record.enabled:
        return refuse(Reason.DEVICE_DISABLED)
    failure = leaf_dates(leaf, now, policy.clock_skew) or _leaf_eku(leaf)
    if failure is not None:
        return refuse(*failure)
    if record.auth_type is AuthType.SELF_SIGNED:
        failure = _thumbprint(peer, record)
        if failure is not None:
            return refuse(*failure)
        return AuthDecision(True, device_id, Reason.OK, Reason.OK.sentence, peer.sha256)
    chained = _ca_chain(peer, leaf, device_id, policy, now)
    if isinstance(chained, tuple):
        return refuse(*chained)
    return AuthDecision(True, device_id, Reason.OK, Reason.OK.sentence, peer.sha256, anchor=chained)


Failure = tuple[Reason, str]
ChainFailure = tuple[Reason, str, str]  # reason, sentence, the library's words for the debug log


def leaf_dates(leaf: x509.Certificate, now: datetime, skew: timedelta) -> Failure | None:
    """The device certificate outside its validity (with `skew` tolerance), in the words a device gets
    at CONNECT and in the log when a live session is closed for it."""
    if leaf.not_valid_before_utc > now + skew:
        return Reason.CERT_NOT_YET_VALID, (
            f"the device certificate is valid from {leaf.not_valid_before_utc:%Y-%m-%d %H:%M:%S}Z but the "
            f"gateway's clock says {now:%Y-%m-%d %H:%M:%S}Z (check both clocks; tolerance {skew})"
        )
    if leaf.not_valid_after_utc < now - skew:
        return Reason.CERT_EXPIRED, f"the device certificate expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M:%S}Z"
    return None


def _leaf_eku(leaf: x509.Certificate) -> Failure | None:
    try:
        eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return None
    if ExtendedKeyUsageOID.CLIENT_AUTH in eku or ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE in eku:
        return None
    names = ", ".join(oid._name for oid in eku)
    return Reason.EKU_NOT_CLIENT_AUTH, f"the certificate's extended key usage is {names}, without clientAuth"


def _thumbprint(peer: PeerIdentity, record: DeviceRecord) -> Failure | None:
    # The cache stores thumbprints normalized; normalizing again costs little and keeps a hand-edited
    # or colon-form registry entry ("AB:CD:...") matching, as IoT Hub users expect.
    registered = {
        t.replace(":", "").replace(" ", "").lower()
        for t in (record.primary_thumbprint, record.secondary_thumbprint) if t
    }
    if not registered:
        return Reason.NO_THUMBPRINT_REGISTERED, Reason.NO_THUMBPRINT_REGISTERED.sentence
    if peer.sha256 in registered or peer.sha1 in registered:
        return None
    return Reason.THUMBPRINT_MISMATCH, (
        f"certificate SHA-256 thumbprint {peer.sha256} matches neither the primary nor the secondary "
        "thumbprint registered for the device"
    )


def _ca_chain(
    peer: PeerIdentity, leaf: x509.Certificate, device_id: str, policy: AuthPolicy, now: datetime
) -> ChainFailure | str:
    """The anchor's thumbprint when the chain verifies, else why not."""
    cns = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = str(cns[0].value) if cns else ""
    if cn != device_id:
        hint = " (CN is case-sensitive)" if cn.lower() == device_id.lower() else ""
        return Reason.CN_MISMATCH, f"certificate CN {cn!r} does not match client id {device_id!r}{hint}", ""
    if _is_ca(leaf):
        return Reason.LEAF_IS_CA, Reason.LEAF_IS_CA.sentence, ""
    anchors = policy.anchors
    if not anchors.roots:
        return Reason.NO_TRUSTED_CA, Reason.NO_TRUSTED_CA.sentence, ""
    # The leaf's own dates were checked with the skew tolerance; verify the chain at an instant inside
    # them so the tolerance is not undone here.
    at = min(max(now, leaf.not_valid_before_utc), leaf.not_valid_after_utc)
    intermediates = [*peer.chain[1:], *anchors.intermediates]
    verdict = verify_chain(leaf, intermediates, anchors.roots, now=at, purpose="client")
    if verdict.ok:
        return thumbprint_sha256(verdict.chain[-1])
    reason, sentence = explain_chain_failure(verdict.reason, leaf, peer.chain[1:], anchors.roots, at)
    return reason, sentence, verdict.detail


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False

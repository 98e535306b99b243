"""Which live sessions must end because of their certificates: pure functions over the chains the
sessions were admitted with and `now`.

A session was admitted against a certificate chain; when the chain stops being good (a certificate in it
expires, or the registered CA it reached is removed), the session ends with the sentence the device
would get if it connected again.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from gateway.auth.chain_failure import chain_cert_expired, name
from gateway.auth.decision import leaf_dates
from gateway.auth.reasons import Reason
from gateway.pki.chain import verify_chain
from gateway.records import PeerIdentity, TrustAnchors

# The reason code of a session closed because its CA was unregistered (the others are auth reasons).
CA_REMOVED = "ca_removed"



@dataclass(frozen=True, slots=True)
class AdmittedChain:
    """What a live session keeps of the chain it was admitted with: the certificates as DER, the leaf's
    thumbprint, and the first notAfter in the chain.

    Not the parsed certificates: with the names and extensions the decision read cached in them, a chain
    of two costs about 5 KiB per idle device (DER about 1). The chain is parsed again only when it is due
    to expire or a CA was removed, which is rare.
    """

    der: tuple[bytes, ...]
    sha256: str | None
    deadline: datetime | None

    @classmethod
    def of(cls, peer: PeerIdentity) -> AdmittedChain:
        return cls(tuple(c.public_bytes(Encoding.DER) for c in peer.chain), peer.sha256, session_deadline(peer))

    def peer(self) -> PeerIdentity:
        """The chain parsed again, as a PeerIdentity (without the SHA-1 thumbprint nobody needs here)."""
        return PeerIdentity(tuple(x509.load_der_x509_certificate(d) for d in self.der), self.sha256, None)


LiveSession = tuple[str, AdmittedChain]


@dataclass(frozen=True, slots=True)
class SessionEnd:
    """A live session to close: whose, the reason code (log and counter label) and the sentence."""

    device_id: str
    code: str
    message: str
    thumbprint: str | None = None


def _issuers(peer: PeerIdentity) -> tuple[x509.Certificate, ...]:
    # A root a device sends along proves nothing (only a registered copy counts): its dates do not either.
    return tuple(c for c in peer.chain[1:] if c.issuer != c.subject)


def session_deadline(peer: PeerIdentity) -> datetime | None:
    """The first notAfter in the session's chain: before it (plus the skew) nothing can have expired."""
    certs = peer.chain[:1] + _issuers(peer)
    return min((c.not_valid_after_utc for c in certs), default=None)


def expired_sessions(sessions: Iterable[LiveSession], now: datetime, skew: timedelta) -> list[SessionEnd]:
    """Sessions whose leaf, or a certificate above it, is past notAfter plus `skew`."""
    ends: list[SessionEnd] = []
    for device_id, held in sessions:
        if held.deadline is None or held.deadline >= now - skew:
            continue
        peer = held.peer()
        leaf = peer.leaf
        if leaf is None:
            continue
        if leaf.not_valid_after_utc < now - skew:
            failure = leaf_dates(leaf, now, skew)
            message = failure[1] if failure is not None else Reason.CERT_EXPIRED.sentence
            ends.append(SessionEnd(device_id, Reason.CERT_EXPIRED.value, message, peer.sha256))
            continue
        expired = [c for c in _issuers(peer) if c.not_valid_after_utc < now - skew]
        if expired:
            ends.append(SessionEnd(device_id, Reason.CHAIN_EXPIRED.value, chain_cert_expired(expired[0]), peer.sha256))
    return ends


def anchor_lost_sessions(
    sessions: Iterable[LiveSession], old: TrustAnchors, new: TrustAnchors, now: datetime
) -> list[SessionEnd]:
    """Sessions whose chain names a CA that `new` no longer holds, and reaches no anchor of `new`.

    Thumbprint devices and devices of other CAs never name a removed CA and are not looked at: a chain
    verification costs ~60 µs here and ten times that on a Pi, too much to spend on every session.
    Verification happens at an instant inside the leaf's validity: dates are `expired_sessions`' business.
    """
    removed = {c.subject: c for c in old.roots if c not in new.roots}
    if not removed:
        return []
    still = {c.subject for c in new.roots}
    ends: list[SessionEnd] = []
    for device_id, held in sessions:
        peer = held.peer()
        leaf = peer.leaf
        named = [removed[c.issuer] for c in peer.chain if c.issuer in removed]
        if leaf is None or not named:
            continue
        if any(c.issuer in still for c in peer.chain):
            at = min(max(now, leaf.not_valid_before_utc), leaf.not_valid_after_utc)
            sent = [*peer.chain[1:], *new.intermediates]
            if verify_chain(leaf, sent, new.roots, now=at, purpose="client").ok:
                continue
        ends.append(SessionEnd(device_id, CA_REMOVED,
                               f"the registered CA {name(named[0])} that this device's chain reached was "
                               "removed from the hub", peer.sha256))
    return ends

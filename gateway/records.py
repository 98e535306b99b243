"""Plain, frozen records that cross module boundaries: what the hub registry says about a device,
and what the TLS handshake proved about a peer. No I/O here."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cryptography import x509

if TYPE_CHECKING:  # the pure front-door core imports this module and must not load the event loop
    import asyncio


class AuthType(enum.Enum):
    """How a child device proves its identity (IoT Hub's names)."""

    SELF_SIGNED = "selfSigned"  # thumbprint match; self-signed allowed
    CERTIFICATE_AUTHORITY = "certificateAuthority"  # chain to a registered CA, CN == device id


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    """One device of the hub registry, as cached by the gateway.

    Thumbprints are stored normalized: lower-case hex, no colons; SHA-256 (64 chars) or SHA-1 (40).
    `parent` is the gateway whose device scope holds this device (None: in no gateway's scope).
    """

    device_id: str
    enabled: bool
    auth_type: AuthType
    parent: str | None
    primary_thumbprint: str | None = None
    secondary_thumbprint: str | None = None
    generation: int = 0  # the hub's change sequence at the record's last change


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    """What the TLS handshake showed about a connecting peer. Built once, when the handshake completes.

    `chain` is exactly what the client sent, leaf first (empty when it sent no certificate).
    """

    chain: tuple[x509.Certificate, ...]
    sha256: str | None  # leaf thumbprint, normalized
    sha1: str | None
    remote: tuple[str, int] = ("", 0)

    @property
    def leaf(self) -> x509.Certificate | None:
        return self.chain[0] if self.chain else None


@dataclass(frozen=True, slots=True)
class TrustAnchors:
    """Certificates a CA-authenticated device may chain to: the trust bundle plus CAs registered in
    the hub; `intermediates` are extra (non-root) CA certs from the registered CA bundles that may fill
    gaps in a chain a client sent incomplete."""

    roots: tuple[x509.Certificate, ...] = ()
    intermediates: tuple[x509.Certificate, ...] = field(default=())


# Not frozen, though nothing changes one after it is built: one is built per device message, and a
# frozen dataclass costs about five times as much to build (bench/ingest_micro.py measures the path).
@dataclass(slots=True)
class InboundMessage:
    """A device-to-cloud message the front door accepted, on its way into the outbox.

    `kind` is the IoT Hub topic family (telemetry, twin_get, twin_reported, method_response);
    `properties` the decoded property bag of the topic, system ($.mid, $.cid, ...) and application
    properties together; `received_at` seconds since the epoch (UTC); `retain` the PUBLISH's retain flag
    (carried to the hub as the `mqtt-retain` property, never acted on).
    """

    device_id: str
    kind: str
    topic: str
    payload: bytes
    qos: int
    properties: tuple[tuple[str, str], ...]
    received_at: float
    retain: bool = False



@dataclass(frozen=True, slots=True)
class Submission:
    """What a message sink took of a batch: the first `accepted` messages, durable once `committed`
    resolves (None when none was taken); `refusal` says why the rest were refused (None if all taken)."""

    committed: asyncio.Future[None] | None
    accepted: int
    refusal: str | None = None

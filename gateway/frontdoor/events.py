"""What a DeviceSession asks its shell to do: small frozen events, performed in the order given.

The session decides; the shell (gateway.frontdoor.connection) performs. Events that only report
(Decided, PublishDenied, ...) exist so that counting and logging stay in the shell, with its
rate limiters, while the session stays free of I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.auth.decision import AuthDecision
from gateway.records import InboundMessage


@dataclass(frozen=True, slots=True)
class LookupDevice:
    """Find the device's record (cache, or a bounded hub fetch when `fetch`), then call record_found."""

    client_id: str
    fetch: bool


@dataclass(frozen=True, slots=True)
class Decided:
    """The authentication decision, for the log line and the counter."""

    decision: AuthDecision


@dataclass(frozen=True, slots=True)
class OpenBroker:
    """Prepare the device's broker session (forget a leftover clean one), then call broker_ready."""

    device_id: str
    clean_session: bool


@dataclass(frozen=True, slots=True)
class Online:
    """Admitted: record the device as connected (a previous connection is taken over) and attach the
    broker session; ToBroker events follow only after this one."""

    device_id: str
    clean_session: bool


@dataclass(frozen=True, slots=True)
class ToBroker:
    """Raw MQTT bytes for the device's broker session (already authorized)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Submit:
    """Store these messages (one device's, in PUBLISH order) durably, then call commit_finished(ticket, ...);
    if the outbox takes only the first n, call submit_refused(ticket, n, why) at once."""

    ticket: int
    messages: tuple[InboundMessage, ...]


@dataclass(frozen=True, slots=True)
class PublishWill:
    """The device went away abnormally: store its will (no PUBACK to anyone)."""

    message: InboundMessage


@dataclass(frozen=True, slots=True)
class PublishDenied:
    device_id: str
    topic: str
    reason: str


@dataclass(frozen=True, slots=True)
class SubscribeDenied:
    device_id: str
    filters: tuple[str, ...]
    reason: str


@dataclass(frozen=True, slots=True)
class ProtocolViolation:
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class TimedOut:
    """No TLS handshake, CONNECT or decision within the deadline (`stage`), or keep-alive expired."""

    stage: str
    seconds: float


@dataclass(frozen=True, slots=True)
class CommitFailed:
    """A message could not be stored; its PUBACK will never be sent and the connection closes."""

    ticket: int
    failure: str


@dataclass(frozen=True, slots=True)
class OutboxRefused:
    """The outbox refused `count` messages of this QoS at its bound; QoS 1 closes the connection
    without a PUBACK."""

    qos: int
    detail: str
    count: int = 1


@dataclass(frozen=True, slots=True)
class PauseReading:
    """Stop reading the socket: too much of this device's data waits for the outbox."""


@dataclass(frozen=True, slots=True)
class ResumeReading:
    """Read the socket again: the device's waiting data is under half the budget."""


@dataclass(frozen=True, slots=True)
class Close:
    """End the connection: flush what is pending, then close TLS (or drop the socket when `abort`).

    `was_online`: the device was admitted, so its broker session is detached and its table entry freed.
    """

    why: str
    abort: bool
    was_online: bool


Event = (
    LookupDevice | Decided | OpenBroker | Online | ToBroker | Submit | PublishWill | PublishDenied
    | SubscribeDenied | ProtocolViolation | TimedOut | CommitFailed | OutboxRefused | PauseReading
    | ResumeReading | Close
)

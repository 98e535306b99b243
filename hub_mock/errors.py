"""The hub mock's exception tree; the HTTP layers turn each into a status and a JSON body.

HubMockError        reason (machine-readable) + message (a sentence for a human)
├── Invalid         400: a malformed or contradictory request
├── NotFound        404: no such device / CA / gateway (or not in the asking gateway's scope)
├── AlreadyExists   409: the id or name is taken
├── SequenceAhead   409: a gateway asked for changes after a seq this hub never reached (registry reset)
└── MethodTimeout   504: a direct method call the device did not answer in time
"""

from __future__ import annotations


class HubMockError(Exception):
    """A request the hub refuses; `reason` is stable, `message` says what to do."""

    status = 500
    default_reason = "internal"

    def __init__(self, message: str, reason: str | None = None) -> None:
        self.reason = reason or self.default_reason
        self.message = message
        super().__init__(f"{self.reason}: {message}")

    def body(self) -> dict[str, str]:
        return {"reason": self.reason, "message": self.message}


class Invalid(HubMockError):
    status = 400
    default_reason = "invalid"


class NotFound(HubMockError):
    status = 404
    default_reason = "not_found"


class AlreadyExists(HubMockError):
    status = 409
    default_reason = "already_exists"


class SequenceAhead(HubMockError):
    status = 409
    default_reason = "sequence_ahead"


class MethodTimeout(HubMockError):
    """504: a direct method reached a device that did not answer in time."""

    status = 504
    default_reason = "gateway_timeout"

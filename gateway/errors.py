"""The one exception tree of the gateway.

    EdgegateError
    ├── ConfigError            bad config.toml: names the file, the key, what is wrong and the fix
    ├── PKIError               certificates and keys: unreadable, mismatched, expired, not a CA ...
    ├── ProtocolError          a peer broke MQTT (framing, limits, illegal packet); carries a reason
    │   └── PacketTooLarge     a packet's remaining length is over the configured maximum
    ├── HubError               talking to the hub failed
    │   ├── HubUnavailable     refused, timed out, blackholed, 5xx, bad server cert: go offline
    │   │   └── HubRefusedContent  400/413/422 (or marked permanent): the request, not the hub, is wrong
    │   └── HubRejected        the hub refused *us* (401/403): loud, but the cache is kept
    ├── EstError               enrolling or renewing a certificate over EST (RFC 7030) failed
    │   ├── EstUnavailable     refused, timed out, 5xx, pending: keep what we hold and retry
    │   ├── EstRejected        the EST server refused us (untrusted server, auth, CSR policy)
    │   └── EstReplyInvalid    the reply is unusable (PKCS#7 that does not parse, wrong key, wrong kind)
    ├── TLSFailed              a device's TLS failed: handshake error, garbage instead of TLS, a broken record
    ├── HttpError              the HTTP/1.1 link under the hub and EST clients failed (gateway.http); those
    │                          clients turn it into a HubError or EstError with their own sentence
    └── StorageError           the gateway's database failed
        └── OutboxFull         the outbox is at its bound; the message was not accepted

Adapters translate foreign exceptions at the boundary and chain them (`raise ... from exc`).
"""

from __future__ import annotations

from enum import StrEnum


class EdgegateError(Exception):
    """Base of every error the gateway raises on purpose."""


class ConfigError(EdgegateError):
    """A configuration problem, reported before anything starts (exit status 2)."""

    def __init__(self, file: str, key: str, problem: str, fix: str | None = None) -> None:
        self.file = file
        self.key = key
        self.problem = problem
        self.fix = fix
        # An empty key means the file as a whole (missing, unreadable, TOML syntax).
        text = f"{file}: [{key}] {problem}" if key else f"{file}: {problem}"
        if fix:
            text += f" (fix: {fix})"
        super().__init__(text)


class TLSFailed(EdgegateError):
    """The TLS layer of a device connection failed: handshake error, garbage instead of TLS, or a broken record."""


class PKIError(EdgegateError):
    """A certificate or key is unusable for the role it was given."""


class ProtocolError(EdgegateError):
    """A peer violated the MQTT protocol or one of our limits."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


class PacketTooLarge(ProtocolError):
    """A packet announced a remaining length above the configured maximum."""


class HubError(EdgegateError):
    """Talking to the hub failed."""


class HubUnavailable(HubError):
    """The hub cannot be reached or trusted right now; the gateway goes offline."""


class HubRefusedContent(HubUnavailable):
    """The hub refused what we sent for good (400, 413, 422, or its body says "permanent": true).

    A HubUnavailable for every caller that does not know better; the forwarder narrows the batch down
    to the messages at fault and moves them to the dead-letter table.
    """

    def __init__(self, status: int, reason: str, detail: str, text: str) -> None:
        self.status, self.reason, self.detail = status, reason, detail
        super().__init__(text)


class HubRejected(HubError):
    """The hub refused the gateway's own identity (401/403)."""


class EstError(EdgegateError):
    """Enrolling or renewing a certificate over EST failed; `reason` is a stable code."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


class EstUnavailable(EstError):
    """The EST server cannot be reached or did not issue now; retrying later may work."""


class EstRejected(EstError):
    """The EST server (or its certificate) was refused, or it refused us: an operator must act."""


class EstReplyInvalid(EstError):
    """The EST server answered with something the gateway cannot use."""


class HttpFailure(StrEnum):
    """How an HTTP exchange failed; the hub and EST clients word each one for their reader."""

    REFUSED = "refused"  # nothing listens at the address
    TIMEOUT = "timeout"  # no connection, or no whole answer, within the deadline
    UNTRUSTED = "untrusted"  # the server's certificate does not verify (root, name or dates)
    TLS = "tls"  # any other TLS failure, among them the server's alerts about our certificate
    RESET = "reset"  # the peer reset the connection
    CLOSED = "closed"  # the peer closed the connection before a whole answer
    MALFORMED = "malformed"  # the answer is not HTTP/1.1
    TOO_LARGE = "too_large"  # the answer's body is over the caller's limit
    UNREACHABLE = "unreachable"  # any other socket error (no route, no such name ...)


class HttpError(EdgegateError):
    """An HTTP exchange failed below the API; `kind` says how, `detail` what the socket or TLS layer said."""

    def __init__(self, kind: HttpFailure, detail: str) -> None:
        self.kind, self.detail = kind, detail
        super().__init__(f"{kind.value}: {detail}")


class StorageError(EdgegateError):
    """The gateway's database failed."""


class OutboxFull(StorageError):
    """The outbox is at its configured bound; the message was not accepted."""

"""The life cycle of one device connection, as a table. Illegal moves raise with the allowed ones."""

from __future__ import annotations

import enum


class ConnState(enum.Enum):
    HANDSHAKING = "handshaking"  # TLS handshake under way; deadline armed at accept
    AWAITING_CONNECT = "awaiting_connect"  # TLS up, no CONNECT yet; same deadline
    AUTHENTICATING = "authenticating"  # CONNECT received, decision (maybe a hub lookup) pending
    ATTACHING = "attaching"  # admitted; the broker session is being prepared
    ONLINE = "online"  # admitted: packets are authorized and forwarded
    CLOSING = "closing"
    CLOSED = "closed"


ALLOWED: dict[ConnState, frozenset[ConnState]] = {
    ConnState.HANDSHAKING: frozenset({ConnState.AWAITING_CONNECT, ConnState.CLOSING}),
    ConnState.AWAITING_CONNECT: frozenset({ConnState.AUTHENTICATING, ConnState.CLOSING}),
    ConnState.AUTHENTICATING: frozenset({ConnState.ATTACHING, ConnState.CLOSING}),
    ConnState.ATTACHING: frozenset({ConnState.ONLINE, ConnState.CLOSING}),
    ConnState.ONLINE: frozenset({ConnState.CLOSING}),
    ConnState.CLOSING: frozenset({ConnState.CLOSED}),
    ConnState.CLOSED: frozenset(),
}

# States in which the handshake/CONNECT deadline still applies.
PRE_ADMISSION = frozenset({
    ConnState.HANDSHAKING, ConnState.AWAITING_CONNECT, ConnState.AUTHENTICATING, ConnState.ATTACHING,
})


class IllegalTransition(RuntimeError):
    def __init__(self, current: ConnState, wanted: ConnState) -> None:
        allowed = ", ".join(sorted(s.value for s in ALLOWED[current])) or "none"
        super().__init__(f"connection cannot go from {current.value} to {wanted.value} (allowed: {allowed})")


def advance(current: ConnState, wanted: ConnState) -> ConnState:
    """The next state, or IllegalTransition."""
    if wanted not in ALLOWED[current]:
        raise IllegalTransition(current, wanted)
    return wanted

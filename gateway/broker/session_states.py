"""A slim replacement for the state machine amqtt builds for every session.

amqtt 0.12.1 gives each `Session` its own `transitions.Machine`: 15.7 KiB of Python heap per
connected device (tracemalloc, `python -m bench.memprofile 300`), a fifth of an idle connection's
memory. The machine has three states and two triggers, so a lookup table and a two-slot object do the
same job in under 0.1 KiB. The broker reads only `state`, `connect()`, `disconnect()` and
`is_connected()`; an invalid trigger still raises `transitions.MachineError`, which amqtt catches.

`install()` swaps `Session._init_states`; `tests/unit/test_session_states.py` checks the table against
the machine amqtt would have built, so an amqtt upgrade that changes it fails a test, not a device.
"""

from __future__ import annotations

from gateway.broker.amqtt_surface import MachineError, Session

# (trigger, state) -> next state; the transitions amqtt's Session._init_states declares.
SESSION_TRANSITIONS: dict[tuple[str, str], str] = {
    ("connect", "new"): "connected",
    ("connect", "disconnected"): "connected",
    ("disconnect", "new"): "disconnected",
    ("disconnect", "connected"): "disconnected",
    ("disconnect", "disconnected"): "disconnected",
}


def next_state(trigger: str, state: str) -> str | None:
    """The state `trigger` leads to from `state`, or None if amqtt's machine would refuse it."""
    return SESSION_TRANSITIONS.get((trigger, state))


class SessionStates:
    """`session.transitions` for one session: its state, the two triggers and the enter hooks."""

    __slots__ = ("_session", "state")

    def __init__(self, session: Session) -> None:
        self._session = session
        self.state = "new"

    def connect(self) -> bool:
        return self._trigger("connect")

    def disconnect(self) -> bool:
        return self._trigger("disconnect")

    def is_new(self) -> bool:
        return self.state == "new"

    def is_connected(self) -> bool:
        return self.state == "connected"

    def is_disconnected(self) -> bool:
        return self.state == "disconnected"

    def _trigger(self, trigger: str) -> bool:
        dest = next_state(trigger, self.state)
        if dest is None:
            raise MachineError(f"Can't trigger event {trigger} from state {self.state}!")
        self.state = dest
        # Like the machine, entering a state runs its hook, also on disconnected -> disconnected.
        if dest == "connected":
            self._session._on_enter_connected()
        else:
            self._session._on_enter_disconnected()
        return True


# amqtt's own, kept for the equivalence test.
AMQTT_INIT_STATES = Session._init_states


def _init_slim_states(session: Session) -> None:
    session.transitions = SessionStates(session)


def install() -> None:
    """Make every amqtt Session built from now on use `SessionStates`. Idempotent."""
    Session._init_states = _init_slim_states


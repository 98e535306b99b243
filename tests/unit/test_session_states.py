"""The slim session state table against the `transitions.Machine` amqtt builds per session."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest
from amqtt.session import Session
from transitions import MachineError

from gateway.broker import session_states
from gateway.broker.session_states import AMQTT_INIT_STATES, SessionStates, next_state

STATES = ("new", "connected", "disconnected")
TRIGGERS = ("connect", "disconnect")


class Hooks:
    """Stands in for a Session: counts the enter hooks each implementation runs."""

    def __init__(self) -> None:
        self.entered: list[str] = []
        self.last_connect_time = None
        self.last_disconnect_time = None

    def _on_enter_connected(self) -> None:
        self.entered.append("connected")

    def _on_enter_disconnected(self) -> None:
        self.entered.append("disconnected")


def amqtt_machine(hooks: Hooks) -> Any:
    AMQTT_INIT_STATES(hooks)  # type: ignore[arg-type]
    return hooks.transitions  # type: ignore[attr-defined]


def slim_states(hooks: Hooks) -> Any:
    return SessionStates(hooks)  # type: ignore[arg-type]


def run(build: Callable[[Hooks], Any], path: tuple[str, ...]) -> tuple[str, list[str], bool]:
    """Fire `path` at a fresh state holder: the final state, the enter hooks run, whether one was refused."""
    hooks = Hooks()
    holder = build(hooks)
    refused = False
    for trigger in path:
        try:
            getattr(holder, trigger)()
        except MachineError:
            refused = True
            break
    return holder.state, hooks.entered, refused


@pytest.mark.parametrize("path", [p for n in range(1, 5) for p in itertools.product(TRIGGERS, repeat=n)])
def test_every_trigger_sequence_matches_amqtt(path: tuple[str, ...]) -> None:
    assert run(slim_states, path) == run(amqtt_machine, path)


@pytest.mark.parametrize(("trigger", "state", "expected"), [
    ("connect", "new", "connected"),
    ("connect", "connected", None),
    ("connect", "disconnected", "connected"),
    ("disconnect", "new", "disconnected"),
    ("disconnect", "connected", "disconnected"),
    ("disconnect", "disconnected", "disconnected"),
    ("reset", "new", None),
])
def test_next_state(trigger: str, state: str, expected: str | None) -> None:
    assert next_state(trigger, state) == expected


def test_installed_sessions_use_the_slim_states() -> None:
    session_states.install()
    session = Session()
    assert isinstance(session.transitions, SessionStates)
    session.transitions.connect()
    assert session.transitions.is_connected()
    assert session.last_connect_time is not None
    session.transitions.disconnect()
    assert session.transitions.state == "disconnected"
    assert session.last_disconnect_time is not None
    assert "state=disconnected" in repr(session)

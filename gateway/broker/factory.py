"""Builds the amqtt broker that sits behind the front door."""

from __future__ import annotations

from typing import Any

from amqtt.broker import Broker

from gateway.broker import session_states, sparse_queue
from gateway.broker.admission import AdmissionTokens, FrontDoorAuthPlugin
from gateway.broker.edge_broker import EdgeBroker
from gateway.broker.link import LISTENER_NAME

# Persistent (clean_session=0) sessions and their queued cloud-to-device messages are kept this long
# after the device was last seen; IoT Hub keeps undelivered C2D messages for up to 48 hours.
SESSION_EXPIRY_SECONDS = 48 * 3600


def broker_config(tokens: AdmissionTokens) -> dict[str, Any]:
    """amqtt configuration: one external listener (ours), no built-in socket, no per-packet plugins."""
    return {
        "listeners": {
            # amqtt only registers listeners that have a `bind`; an external one never binds it.
            "default": {"type": "external", "bind": "front-door"},
            LISTENER_NAME: {"type": "external", "bind": "front-door"},
        },
        "timeout_disconnect_delay": 0,
        "session_expiry_interval": SESSION_EXPIRY_SECONDS,
        # Only our admission check: amqtt's default event/packet loggers cost work on every packet.
        "plugins": {f"{FrontDoorAuthPlugin.__module__}.{FrontDoorAuthPlugin.__qualname__}": {"tokens": tokens}},
    }


def build_broker(tokens: AdmissionTokens) -> Broker:
    """A broker that admits only sessions the front door minted `tokens` for."""
    session_states.install()
    sparse_queue.install()
    return EdgeBroker(broker_config(tokens))

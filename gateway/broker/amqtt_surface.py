"""Every amqtt name the gateway uses, imported here and nowhere else (checked by a test).

The gateway leans on amqtt 0.12.1's internals (its session table, its broadcast loop, the state
machine and queues it builds per session), so it runs only on that exact version: `check_version()`
refuses any other with a sentence instead of failing in behaviour. The rest of the gateway talks to
the broker through gateway.broker.port; the modules beside this one adapt amqtt and import from here.
"""

from __future__ import annotations

from importlib import metadata

import amqtt.mqtt.protocol.broker_handler as broker_handler_module
import amqtt.mqtt.protocol.handler as handler_module
import amqtt.session as session_module
from amqtt.adapters import ReaderAdapter, WriterAdapter
from amqtt.broker import Broker
from amqtt.contexts import Action
from amqtt.errors import BrokerError
from amqtt.events import BrokerEvents
from amqtt.mqtt.constants import QOS_0, QOS_1, QOS_2
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.plugins.base import BaseAuthPlugin
from amqtt.session import OutgoingApplicationMessage, Session
from transitions import MachineError

from gateway.errors import EdgegateError

# The only amqtt the adapters beside this module were written and tested against.
AMQTT_VERSION = "0.12.1"

__all__ = [
    "AMQTT_VERSION", "QOS_0", "QOS_1", "QOS_2", "Action", "BaseAuthPlugin", "Broker", "BrokerError", "BrokerEvents",
    "BrokerProtocolHandler", "MachineError",
    "OutgoingApplicationMessage", "ReaderAdapter", "Session", "WriterAdapter", "broker_handler_module",
    "check_version", "handler_module", "session_module",
]


def check_version(installed: str | None = None) -> None:
    """Refuse to run on an amqtt other than the one the gateway's adapters were tested against."""
    found = installed if installed is not None else metadata.version("amqtt")
    if found != AMQTT_VERSION:
        raise EdgegateError(
            f"amqtt {found} is installed, but edgegate needs exactly amqtt {AMQTT_VERSION} (it adapts its "
            f"internals); reinstall edgegate so pip puts back amqtt=={AMQTT_VERSION}"
        )

"""What the two HTTP apps share: the stores, the wake-up signals, the fault switch and the TLS context."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from cryptography import x509

from hub_mock.c2d import C2DQueue
from hub_mock.db import Database
from hub_mock.faults import FaultSwitch
from hub_mock.ingest import MessageStore
from hub_mock.methods import DeviceEvents
from hub_mock.registry import Registry
from hub_mock.twins import TwinStore
from hub_mock.wakeup import Wakeup


@dataclass(slots=True)
class HubServices:
    db: Database
    registry: Registry
    messages: MessageStore
    c2d: C2DQueue
    twins: TwinStore
    # Fired after every write (registry or cloud-to-device): a device moving into a scope can make
    # both a change and a queued message visible to a gateway's long polls.
    wakeup: Wakeup
    faults: FaultSwitch
    api_context: ssl.SSLContext  # registered CAs and identity certs are added to its trust store
    clock: Callable[[], datetime]
    api_port: int = 0
    admin_port: int = 0
    est_ca: x509.Certificate | None = None  # gateways whose identity this EST CA issued are accepted
    est_port: int = 0
    # Desired-patch notices and method calls for the gateways' long polls, and who is polling (memory).
    events: DeviceEvents = field(default_factory=DeviceEvents)

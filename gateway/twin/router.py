"""The front door's MessageSink: telemetry to the outbox, twin and method traffic to their services.

Nothing but telemetry ever enters the outbox, so nothing else can reach the hub as telemetry. A
telemetry message published with retain=1 is carried with IoT Hub's `mqtt-retain: true` application
property (as edgeHub does) and is never retained.
"""

from __future__ import annotations

import asyncio
import dataclasses

from gateway.auth.topics import RETAIN_PROPERTY, DeviceTopics, TopicKind
from gateway.frontdoor.services import MessageSink
from gateway.metrics import Counters
from gateway.records import InboundMessage
from gateway.twin.methods import MethodRelay
from gateway.twin.service import TwinService


class TwinRouter:
    def __init__(self, outbox: MessageSink, twins: TwinService, methods: MethodRelay | None,
                 counters: Counters | None = None) -> None:
        self.outbox, self.twins, self.methods = outbox, twins, methods
        self.counters = counters or Counters()

    def submit(self, message: InboundMessage) -> asyncio.Future[None]:
        """Route one accepted PUBLISH; the future resolves when the PUBACK may go out."""
        if message.kind == TopicKind.TELEMETRY.value:
            if message.retain:
                message = dataclasses.replace(message, properties=(*message.properties, (RETAIN_PROPERTY, "true")))
            return self.outbox.submit(message)
        # Twin and method topics are rare next to telemetry: parsing the topic again here keeps the
        # front door's record unchanged.
        verdict = DeviceTopics.for_device(message.device_id).classify_publish(message.topic)
        if verdict.kind is TopicKind.TWIN_REPORTED:
            return self.twins.reported(message.device_id, verdict.rid, message.payload)
        if verdict.kind is TopicKind.TWIN_GET:
            self.twins.get(message.device_id, verdict.rid)
        elif verdict.kind is TopicKind.METHOD_RESPONSE and self.methods is not None:
            self.methods.respond(message.device_id, verdict.rid, verdict.status, message.payload)
        else:
            self.counters.inc("edgegate_publish_denied_total", reason=verdict.reason)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

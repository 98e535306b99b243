"""The front door's MessageSink: telemetry to the outbox, twin and method traffic to their services.

Nothing but telemetry ever enters the outbox, so nothing else can reach the hub as telemetry. A
telemetry message published with retain=1 is carried with IoT Hub's `mqtt-retain: true` application
property (as edgeHub does) and is never retained.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence

from gateway.auth.topics import RETAIN_PROPERTY, DeviceTopics, TopicKind
from gateway.frontdoor.services import MessageSink
from gateway.metrics import Counters
from gateway.records import InboundMessage, Submission
from gateway.twin.methods import MethodRelay
from gateway.twin.service import TwinService

_TELEMETRY = TopicKind.TELEMETRY.value  # an enum member's .value is a descriptor call; this runs per device read


class TwinRouter:
    def __init__(self, outbox: MessageSink, twins: TwinService, methods: MethodRelay | None,
                 counters: Counters | None = None) -> None:
        self.outbox, self.twins, self.methods = outbox, twins, methods
        self.counters = counters or Counters()

    def submit_many(self, messages: Sequence[InboundMessage]) -> Submission:
        """Route one device's PUBLISHes of one read: telemetry runs go to the outbox as batches, twin and
        method messages to their services, in order; one future for them all. The outbox may take only
        a prefix of a run: then nothing after it is routed."""
        telemetry = _TELEMETRY
        for m in messages:
            if m.kind != telemetry or m.retain:
                break
        else:  # all plain telemetry: the one path of a device read (a loop, not all() over a generator)
            return self.outbox.submit_many(messages)
        futures: list[asyncio.Future[None]] = []
        accepted, refusal = 0, None
        run: list[InboundMessage] = []
        for message in (*messages, None):
            if message is not None and message.kind == telemetry:
                run.append(message)
                continue
            if run:
                taken = self.outbox.submit_many([self._with_retain(m) for m in run])
                if taken.committed is not None:
                    futures.append(taken.committed)
                accepted += taken.accepted
                if taken.accepted < len(run):
                    refusal = taken.refusal
                    break
                run = []
            if message is not None:
                futures.append(self.submit(message))
                accepted += 1
        if not futures:
            return Submission(None, accepted, refusal)
        both = futures[0] if len(futures) == 1 else _all_of(futures)
        return Submission(both, accepted, refusal)

    @staticmethod
    def _with_retain(message: InboundMessage) -> InboundMessage:
        if not message.retain:
            return message
        return dataclasses.replace(message, properties=(*message.properties, (RETAIN_PROPERTY, "true")))

    def submit(self, message: InboundMessage) -> asyncio.Future[None]:
        """Route one accepted PUBLISH; the future resolves when the PUBACK may go out."""
        if message.kind == TopicKind.TELEMETRY.value:
            return self.outbox.submit(self._with_retain(message))
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


def _all_of(futures: list[asyncio.Future[None]]) -> asyncio.Future[None]:
    """One future for several: done when all are, failed with the first failure."""
    combined: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    left = len(futures)

    def one_done(fut: asyncio.Future[None]) -> None:
        nonlocal left
        left -= 1
        if combined.done():
            if not fut.cancelled():
                fut.exception()  # retrieved: the combined future already reported the first failure
            return
        if fut.cancelled():
            combined.cancel()
        elif (exc := fut.exception()) is not None:
            combined.set_exception(exc)
        elif left == 0:
            combined.set_result(None)

    for fut in futures:
        fut.add_done_callback(one_done)
    return combined

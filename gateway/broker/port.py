"""The one door between the gateway and amqtt: start and stop the broker, open a device's session,
deliver cloud-to-device messages. Nothing outside gateway.broker touches amqtt; everything goes here.

What amqtt still does for us: persistent sessions (clean_session=0) and their queued QoS 1 messages,
subscriptions and delivery. What it never does: read a device's socket, decide who a device is, or
see a byte the front door did not authorize. Each device's session is fed through an external
listener with a re-encoded CONNECT carrying a one-time admission token (gateway.broker.admission).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from gateway.auth.topics import filter_matches
from gateway.broker import session_states, sparse_queue
from gateway.broker.admission import AdmissionTokens, FrontDoorAuthPlugin
from gateway.broker.amqtt_surface import check_version
from gateway.broker.edge_broker import EdgeBroker
from gateway.broker.link import LISTENER_NAME, BrokerReader, BrokerWriter
from gateway.metrics import Counters
from gateway.mqtt import codec
from gateway.service.supervisor import Supervisor

log = logging.getLogger("edgegate.broker")

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


class BrokerOutput(Protocol):
    """Where a device's broker session writes: the front door's connection for that device."""

    def send(self, data: bytes) -> None:
        """One whole MQTT packet for the device."""

    def drain_waiter(self) -> asyncio.Future[None] | None:
        """A future to await while the device's socket is over its write buffer, or None."""

    def broker_closed(self) -> None:
        """The broker ended the session."""


class BrokerLink:
    """One device's pipe into its broker session."""

    __slots__ = ("_reader",)

    def __init__(self, reader: BrokerReader) -> None:
        self._reader = reader

    def forward(self, data: bytes) -> None:
        """Authorized MQTT bytes from the device."""
        self._reader.feed(data)

    def close(self) -> None:
        """The device is gone: the broker sees end-of-stream and ends (or parks) the session."""
        self._reader.feed_eof()


class BrokerPort:
    """The amqtt broker behind the front door; its two background loops (broadcast, session expiry) run
    under `supervisor` (the gateway's own, so status shows them)."""

    stop_grace = 5.0  # seconds `stop` lets session handlers finish before it cancels them

    def __init__(self, supervisor: Supervisor | None = None) -> None:
        check_version()
        session_states.install()
        sparse_queue.install()
        self.tokens = AdmissionTokens()
        self.broker = EdgeBroker(broker_config(self.tokens))
        self.supervisor = supervisor or Supervisor(Counters())
        self._sessions: dict[asyncio.Task[None], BrokerReader] = {}  # each running session handler, its input
        self._sending: set[asyncio.Task[Any]] = set()
        self._loops: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await self.broker.start()
        self._loops = [self.supervisor.owned("broker-broadcast", self.broker.broadcast_forever),
                       self.supervisor.owned("broker-session-expiry", self.broker.expire_sessions_forever)]

    async def stop(self) -> None:
        """End every session still attached (end-of-stream, as if its device had gone), wait briefly for
        their handlers to finish, stop the broker's loops, then shut it down."""
        for reader in self._sessions.values():
            reader.feed_eof()  # the front door has closed its links already, unless its own stop failed
        if self._sessions:
            await asyncio.wait(list(self._sessions), timeout=self.stop_grace)
        # A session handler still running after that is cut off, not left pending for the loop's close to
        # destroy ("Task was destroyed but it is pending!", and its finally blocks never run).
        leftover = list(self._sessions) + list(self._sending)
        for task in leftover:
            task.cancel()
        await asyncio.gather(*leftover, return_exceptions=True)
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        await self.broker.shutdown()

    def has_leftover_clean_session(self, device_id: str, clean_session: bool) -> bool:
        """Is there a clean_session=1 session a clean_session=0 CONNECT would wrongly resume?

        amqtt 0.12.1 keeps a clean session after its connection ends (MQTT-3.1.2-6 says it ends with
        it), and a later clean_session=0 CONNECT inherits its clean flag, so nothing would ever be
        queued for the device while it is away. A clean_session=1 CONNECT is handled by amqtt itself.
        """
        if clean_session:
            return False
        entry = self.broker._sessions.get(device_id)
        return entry is not None and bool(entry[0].clean_session)

    async def forget_session(self, device_id: str) -> None:
        await self.broker._delete_session(device_id)

    @property
    def sessions_running(self) -> int:
        """Broker session handlers still running: one per attached device, none once it is gone."""
        return len(self._sessions)

    def filters_held(self, device_id: str) -> int:
        """How many topic filters the device's (resumed) session already holds."""
        return self.broker.filter_count(device_id)

    def attach(self, device_id: str, clean_session: bool, output: BrokerOutput,
               peer: tuple[str, int]) -> BrokerLink:
        """Open the admitted device's broker session; amqtt answers with the device's CONNACK."""
        token = self.tokens.mint(device_id)
        reader = BrokerReader()
        # amqtt gets a CONNECT we wrote: MQTT 3.1.1, no will (wills are ours), no keep-alive (enforced
        # by the front door), and the admission token in place of the password.
        reader.feed(codec.encode_connect(client_id=device_id, clean_session=clean_session, keep_alive=0,
                                         username=device_id, password=token.encode()))
        writer = BrokerWriter(output.send, output.drain_waiter, output.broker_closed, peer)
        task = asyncio.get_running_loop().create_task(self._run_session(reader, writer))
        self._sessions[task] = reader
        task.add_done_callback(self._session_done)
        return BrokerLink(reader)

    def _session_done(self, task: asyncio.Task[None]) -> None:
        self._sessions.pop(task, None)

    async def _run_session(self, reader: BrokerReader, writer: BrokerWriter) -> None:
        try:
            await self.broker.external_connected(reader, writer, LISTENER_NAME)
        except Exception:
            log.exception("broker session handler failed")

    async def deliver(self, topic: str, payload: bytes, qos: int = 1) -> None:
        """Publish a message from the cloud side to whichever sessions subscribe to `topic`."""
        await self.broker.internal_message_broadcast(topic, payload, qos)

    def deliver_to(self, device_id: str, topic: str, payload: bytes, qos: int) -> bool:
        """Send a message to one connected device's session only, if it subscribes to `topic`.

        For $iothub replies (twin responses, desired patches, method calls): their topics carry no
        device id and every device subscribes to the same filters, so a broadcast would hand one
        device's twin to all. False when the device is not connected or not subscribed.
        """
        session, handler = self.broker._sessions.get(device_id, (None, None))
        if session is None or handler is None or not session.transitions.is_connected():
            return False
        if not any(filter_matches(f, topic) for f in self.broker.filters_of(device_id)):
            return False
        task = asyncio.get_running_loop().create_task(handler.mqtt_publish(topic, payload, qos, retain=False))
        self._sending.add(task)
        task.add_done_callback(self._sent)
        return True

    def _sent(self, task: asyncio.Task[Any]) -> None:
        self._sending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("delivery to a device failed: %s", task.exception())

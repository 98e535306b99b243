"""amqtt's Broker without the walks over every device's subscriptions that it does per connection.

amqtt 0.12.1 keeps one table, topic filter -> [(session, qos)], and walks all of it where one device's
entries would do. With every device subscribed, each walk costs time in proportion to the fleet, per
connection, so a reconnect storm costs fleet x fleet. Profiled with py-spy in a 2,000-device storm
(`python -m bench`), before these changes:

- 25.8 % of the event loop: `logger.debug(repr(self._subscriptions))` after every SUBSCRIBE, which
  formats the whole table whatever the log level;
- 15.3 %: on every CONNECT, a retained-message lookup (and two debug f-strings) per filter in the
  broker. Nothing is ever retained here: device PUBLISHes and wills stop at the front door;
- on every session delete (a clean session reconnecting, a takeover), one `_del_subscription`
  call per filter in the broker;
- and for every broadcast (each cloud-to-device message), a match and a debug line per filter in the
  broker: 8.9 ms per message with 10,000 devices subscribed.

`EdgeBroker` keeps amqtt's table as it is and adds two indexes: each device's own filters, so deleting
a session touches only its entries, and a trie of all filters (`FilterIndex`), so a broadcast visits only
the filters that match its topic. Delivery to each matching session follows amqtt's own rules.
`tests/unit/test_edge_broker.py` runs the same subscribe/unsubscribe/delete sequences on this broker and
on amqtt's and compares the tables, the indexes and who receives a broadcast.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import deque
from typing import Any

from gateway.broker.amqtt_surface import (
    QOS_0,
    QOS_1,
    QOS_2,
    Action,
    Broker,
    BrokerError,
    BrokerEvents,
    BrokerProtocolHandler,
    MachineError,
    OutgoingApplicationMessage,
    Session,
)
from gateway.broker.filter_index import FilterIndex
from gateway.broker.session_loop import serve_session


class _Subscriptions(dict[str, list[tuple[Session, int]]]):
    """amqtt's subscription table, with a repr that says its size instead of walking it."""

    def __repr__(self) -> str:
        return f"<{len(self)} subscription filters>"


class EdgeBroker(Broker):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self._subscriptions = _Subscriptions()
        self._filters_of: dict[str | None, set[str]] = {}  # client id -> the filters it holds
        self._filter_index = FilterIndex()  # every filter in `_subscriptions`
        # Handlers whose session a newer connection took over; their loop ends without ending the session.
        self._taken_over: weakref.WeakSet[BrokerProtocolHandler] = weakref.WeakSet()

    async def start(self) -> None:
        # amqtt's start() empties its table; the indexes over it go with it.
        self._filters_of.clear()
        self._filter_index = FilterIndex()
        await super().start()

    def filters_of(self, client_id: str) -> tuple[str, ...]:
        """The topic filters one device's session holds."""
        return tuple(self._filters_of.get(client_id, ()))

    def filter_count(self, client_id: str) -> int:
        """How many topic filters one device's session holds."""
        return len(self._filters_of.get(client_id, ()))

    async def add_subscription(self, subscription: tuple[str, int], session: Session) -> int:
        """amqtt 0.12.1's rules, in its order: the wildcard checks, the topic-filtering plugins, max-qos,
        and a device subscribed twice to one filter keeps its first entry. amqtt finds that duplicate by
        walking every device subscribed to the filter, and every device here subscribes to the same
        `$iothub/twin/res/#` and `$iothub/methods/POST/#`: a 5,000-device reconnect storm walked them
        12.5 million times. The device's own filter set answers it at once."""
        topic_filter, qos = subscription
        levels = topic_filter.split("/")
        last = len(levels) - 1
        for index, level in enumerate(levels):
            if "#" in level and (level != "#" or index != last):
                return 0x80  # [MQTT-4.7.1-2] '#' only as the whole last level
            if "+" in level and level != "+":
                return 0x80  # [MQTT-4.7.1-3] '+' only as a whole level
        if not await self._topic_filtering(session, topic_filter, Action.SUBSCRIBE):
            return 0x80
        max_qos = self.config.get("max-qos", qos)
        granted = min(qos, max_qos if isinstance(max_qos, int) else qos)
        held = self._filters_of.setdefault(session.client_id, set())
        if topic_filter not in held:
            held.add(topic_filter)
            self._subscriptions.setdefault(topic_filter, []).append((session, granted))
            self._filter_index.add(topic_filter)
        return granted

    def _del_subscription(self, a_filter: str, session: Session) -> int:
        deleted: int = super()._del_subscription(a_filter, session)
        filters = self._filters_of.get(session.client_id)
        if filters is not None:
            filters.discard(a_filter)
            if not filters:
                del self._filters_of[session.client_id]
        return deleted

    async def _del_all_subscriptions(self, session: Session) -> None:
        # amqtt's version asks every filter in the broker; only this session's can hold it.
        for a_filter in list(self._filters_of.get(session.client_id, ())):
            if self._del_subscription(a_filter, session) and not self._subscriptions.get(a_filter, True):
                del self._subscriptions[a_filter]
                self._filter_index.discard(a_filter)

    async def _handle_client_session(self, reader: Any, writer: Any, client_session: Session,
                                     handler: BrokerProtocolHandler, server: Any, listener_name: str) -> None:
        """amqtt 0.12.1's session start, step for step, but for the last: amqtt offers retained messages
        for every filter in the broker to each connecting session (a walk over the whole table per
        CONNECT, the cost of a reconnect storm); here only the session's own filters, and only when
        anything is retained at all."""
        authenticated = await self._authenticate(client_session, self.listeners_config[listener_name])
        if client_session.client_id is None:
            raise BrokerError("Client ID was not correctly created/set.")
        while True:
            try:
                client_session.transitions.connect()
                break
            except (MachineError, ValueError):
                if client_session.transitions.is_connected():
                    # A second connection with the same id takes the session over.
                    _old_session, old_handler = self._sessions[client_session.client_id]
                    self._taken_over.add(old_handler)
                    await old_handler.handle_connection_closed()
                    await old_handler.stop()
                    break
                await asyncio.sleep(1)
        handler.attach(client_session, reader, writer)
        self._sessions[client_session.client_id] = (client_session, handler)
        await handler.mqtt_connack_authorize(authenticated)
        if not authenticated:
            await writer.close()
            return
        await self.plugins_manager.fire_event(BrokerEvents.CLIENT_CONNECTED, client_id=client_session.client_id,
                                              client_session=client_session)
        await handler.start()
        await self._publish_session_retained_messages(client_session)
        if self._retained_messages:
            for a_filter in list(self._filters_of.get(client_session.client_id, ())):
                await self._publish_retained_messages_for_subscription((a_filter, QOS_0), client_session)
        await self._client_message_loop(client_session, handler)

    async def _handle_disconnect(self, client_session: Session, handler: BrokerProtocolHandler,
                                 disconnect_waiter: Any) -> None:
        if handler in self._taken_over:
            # The connection's persistent session now belongs to a newer connection (and the takeover
            # stopped this handler). amqtt would mark the shared session disconnected under the new
            # connection, and broadcasts would park its cloud-to-device messages until the device
            # connected yet again.
            self._taken_over.discard(handler)
            await self._stop_handler(handler)
            return
        await super()._handle_disconnect(client_session, handler, disconnect_waiter)

    async def _client_message_loop(self, client_session: Session, handler: BrokerProtocolHandler) -> None:
        # amqtt's loop keeps four tasks per connected device; this one waits on one future.
        await serve_session(self, client_session, handler)

    # amqtt starts its broadcast loop and its session-expiry monitor as bare tasks. Its broadcast loop
    # drops whatever a broadcast raises without a word (the task's exception is never retrieved), and an
    # exception escaping the monitor ends session expiry for good. Here both do nothing at start; the loops
    # below run under the gateway's supervisor instead (BrokerPort.start): a failure is logged once with its
    # cause, counted, shown in status, and the loop starts again after a back-off.
    async def _broadcast_loop(self) -> None:
        return

    async def _session_monitor(self) -> None:
        return

    async def broadcast_forever(self) -> None:
        """Hand each queued broadcast to the sessions that subscribe to it, until cancelled."""
        running = self._tasks_queue
        try:
            while True:
                while running and running[0].done():
                    task = running.popleft()
                    if not task.cancelled() and task.exception() is not None:
                        # One device's delivery failing (it went away mid-publish) is not the loop's failure.
                        self.logger.debug("a delivery to one session failed: %r", task.exception())
                await self._run_broadcast(running)
        finally:
            for task in running:
                task.cancel()
            running.clear()

    async def expire_sessions_forever(self) -> None:
        """amqtt's session monitor: drop ended clean sessions and persistent ones past their expiry."""
        await super()._session_monitor()

    async def _publish_retained_messages_for_subscription(self, subscription: tuple[str, int],
                                                          session: Session) -> None:
        if self._retained_messages:
            await super()._publish_retained_messages_for_subscription(subscription, session)

    async def _run_broadcast(self, running_tasks: deque[asyncio.Task[OutgoingApplicationMessage]]) -> None:
        # amqtt's version tries every filter in the broker; the index yields the matching ones.
        broadcast = await self._broadcast_queue.get()
        for a_filter in self._filter_index.matching(broadcast["topic"]):
            for target_session, sub_qos in list(self._subscriptions.get(a_filter, ())):
                await self._deliver(broadcast, target_session, sub_qos, running_tasks)

    async def _deliver(self, broadcast: dict[str, Any], target: Session, sub_qos: int,
                       running_tasks: deque[asyncio.Task[OutgoingApplicationMessage]]) -> None:
        """One broadcast to one subscribed session, by amqtt 0.12.1's rules for it."""
        topic = broadcast["topic"]
        qos = broadcast.get("qos", sub_qos)
        if not await self._topic_filtering(target, topic=topic, action=Action.RECEIVE):
            return
        connected = target.transitions.state == "connected"
        if not connected:
            # A persistent session (clean_session=0) keeps QoS 1/2 messages until it reconnects.
            if not target.clean_session and qos in (QOS_1, QOS_2) and not target.is_anonymous:
                await self._retain_broadcast_message(broadcast, qos, target)
            return
        handler = self._get_handler(target)
        if handler is not None:
            publish = handler.mqtt_publish(topic, broadcast["data"], qos, retain=False)
            running_tasks.append(asyncio.ensure_future(publish))

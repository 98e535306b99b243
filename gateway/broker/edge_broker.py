"""amqtt's Broker without the walks over every device's subscriptions that it does per connection.

amqtt 0.12.1 keeps one table, topic filter -> [(session, qos)], and walks all of it where one device's
entries would do. With every device subscribed, each walk costs time in proportion to the fleet, per
connection, so a reconnect storm costs fleet x fleet. Profiled with py-spy in a 2,000-device storm
(`python -m bench`), before these changes:

- 25.8 % of the event loop: `logger.debug(repr(self._subscriptions))` after every SUBSCRIBE, which
  formats the whole table whatever the log level;
- 15.3 %: on every CONNECT, a retained-message lookup (and two debug f-strings) per filter in the
  broker. Nothing is ever retained here: device PUBLISHes and wills stop at the front door;
- and on every session delete (a clean session reconnecting, a takeover), one `_del_subscription`
  call per filter in the broker.

`EdgeBroker` keeps amqtt's table as it is (the broadcast path reads it) and adds an index of each
device's own filters, so deleting a session touches only its entries. `tests/unit/test_edge_broker.py`
runs the same subscribe/unsubscribe/delete sequences on this broker and on amqtt's and compares tables.
"""

from __future__ import annotations

from typing import Any

from amqtt.broker import Broker
from amqtt.session import Session


class _Subscriptions(dict[str, list[tuple[Session, int]]]):
    """amqtt's subscription table, with a repr that says its size instead of walking it."""

    def __repr__(self) -> str:
        return f"<{len(self)} subscription filters>"


class EdgeBroker(Broker):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self._subscriptions = _Subscriptions()
        self._filters_of: dict[str | None, set[str]] = {}  # client id -> the filters it holds

    async def add_subscription(self, subscription: tuple[str, int], session: Session) -> int:
        granted: int = await super().add_subscription(subscription, session)
        if granted != 0x80:
            self._filters_of.setdefault(session.client_id, set()).add(subscription[0])
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

    async def _publish_retained_messages_for_subscription(self, subscription: tuple[str, int],
                                                          session: Session) -> None:
        if self._retained_messages:
            await super()._publish_retained_messages_for_subscription(subscription, session)

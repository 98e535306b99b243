"""EdgeBroker's subscription table stays what amqtt's own broker would hold, for any sequence of
subscribes, unsubscribes and session deletes; only the cost of getting there differs."""

from __future__ import annotations

import asyncio
from collections import deque

from amqtt.broker import Broker
from amqtt.session import Session
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.broker.admission import AdmissionTokens
from gateway.broker.edge_broker import EdgeBroker
from gateway.broker.port import broker_config

CLIENTS = ("dev-a", "dev-b", "dev-c")
FILTERS = ("devices/dev-a/messages/devicebound/#", "$iothub/twin/res/#", "$iothub/methods/POST/#", "a/+/b", "#",
           "a/#")

operation = st.one_of(
    st.tuples(st.just("subscribe"), st.sampled_from(CLIENTS), st.sampled_from(FILTERS), st.integers(0, 1)),
    st.tuples(st.just("unsubscribe"), st.sampled_from(CLIENTS), st.sampled_from(FILTERS), st.just(0)),
    st.tuples(st.just("delete"), st.sampled_from(CLIENTS), st.just(""), st.just(0)),
)

Table = dict[str, list[tuple[str | None, int]]]


def table(broker: Broker) -> Table:
    return {f: [(s.client_id, q) for s, q in subs] for f, subs in broker._subscriptions.items()}


BROADCAST_TOPICS = ("devices/dev-a/messages/devicebound/x", "$iothub/twin/res/200", "$iothub/methods/POST/m",
                    "a/x/b", "a/b")

Delivered = dict[str, list[tuple[str, int]]]


async def deliveries(broker: Broker, sessions: dict[str, Session]) -> Delivered:
    """Broadcast on each topic; sessions are offline with clean_session=0, so what each would receive is
    queued on it, observable without a connection."""
    for topic in BROADCAST_TOPICS:
        await broker.internal_message_broadcast(topic, b"payload", 1)
        await broker._run_broadcast(deque())
    delivered: Delivered = {}
    for client_id, session in sessions.items():
        queue = session.retained_messages
        delivered[client_id] = [(m.topic, m.qos) for m in (queue.get_nowait() for _ in range(queue.qsize()))]
    return delivered


Op = tuple[str, str, str, int]


async def run(broker_class: type[Broker], ops: list[Op]) -> tuple[Table, list[object], Delivered]:
    broker = broker_class(broker_config(AdmissionTokens()))
    sessions = {}
    for client_id in CLIENTS:
        sessions[client_id] = Session()
        sessions[client_id].client_id = client_id
        sessions[client_id].clean_session = False
    results: list[object] = []
    for kind, client_id, a_filter, qos in ops:
        session = sessions[client_id]
        if kind == "subscribe":
            results.append(await broker.add_subscription((a_filter, qos), session))
        elif kind == "unsubscribe":
            results.append(broker._del_subscription(a_filter, session))
        else:
            await broker._del_all_subscriptions(session)
    return table(broker), results, await deliveries(broker, sessions)


@settings(max_examples=300, deadline=None)
@given(st.lists(operation, max_size=25))
def test_same_table_as_amqtt(ops: list[tuple[str, str, str, int]]) -> None:
    assert asyncio.run(run(EdgeBroker, ops)) == asyncio.run(run(Broker, ops))


def test_deleting_a_session_touches_only_its_own_filters() -> None:
    async def scenario() -> tuple[int, Table]:
        broker = EdgeBroker(broker_config(AdmissionTokens()))
        calls = 0
        original = broker._del_subscription

        def counting(a_filter: str, session: Session) -> int:
            nonlocal calls
            calls += 1
            return original(a_filter, session)

        broker._del_subscription = counting  # type: ignore[method-assign]
        sessions = []
        for i in range(1000):
            session = Session()
            session.client_id = f"dev-{i}"
            sessions.append(session)
            await broker.add_subscription((f"devices/dev-{i}/messages/devicebound/#", 1), session)
        await broker._del_all_subscriptions(sessions[7])
        return calls, table(broker)

    calls, after = asyncio.run(scenario())
    assert calls == 1
    assert "devices/dev-7/messages/devicebound/#" not in after
    assert len(after) == 999


def test_repr_of_the_table_does_not_walk_it() -> None:
    async def scenario() -> str:
        broker = EdgeBroker(broker_config(AdmissionTokens()))
        session = Session()
        session.client_id = "dev-a"
        await broker.add_subscription(("devices/dev-a/messages/devicebound/#", 1), session)
        return repr(broker._subscriptions)

    assert asyncio.run(scenario()) == "<1 subscription filters>"

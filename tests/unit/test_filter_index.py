"""FilterIndex finds exactly the filters amqtt's own matcher accepts, for generated filters and topics."""

from __future__ import annotations

import asyncio

import pytest
from amqtt.broker import Broker
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.broker.admission import AdmissionTokens
from gateway.broker.filter_index import FilterIndex
from gateway.broker.port import broker_config

NAMES = ("a", "b", "$x", "")  # "" is a legal (empty) level; "$x" exercises the $-topic rule


async def _broker() -> Broker:
    return Broker(broker_config(AdmissionTokens()))


ORACLE = asyncio.run(_broker())  # only its pure `_matches` is used

topic = st.lists(st.sampled_from(NAMES), min_size=1, max_size=4).map("/".join)


@st.composite
def topic_filter(draw: st.DrawFn) -> str:
    """A filter amqtt would accept: `+` fills a level, `#` only as the last level."""
    levels = draw(st.lists(st.sampled_from((*NAMES, "+")), min_size=1, max_size=4))
    if draw(st.booleans()):
        levels = [*levels[:3], "#"] if draw(st.booleans()) else ["#"]
    return "/".join(levels)


@settings(max_examples=500, deadline=None)
@given(st.sets(topic_filter(), max_size=12), st.lists(topic, min_size=1, max_size=6))
def test_matches_what_amqtt_matches(filters: set[str], topics: list[str]) -> None:
    index = FilterIndex()
    for f in filters:
        index.add(f)
    for t in topics:
        assert sorted(index.matching(t)) == sorted(f for f in filters if ORACLE._matches(t, f))


@settings(max_examples=300, deadline=None)
@given(st.sets(topic_filter(), max_size=12), st.data())
def test_discard_leaves_the_rest(filters: set[str], data: st.DataObject) -> None:
    index = FilterIndex()
    for f in filters:
        index.add(f)
    gone = data.draw(st.sets(st.sampled_from(sorted(filters)))) if filters else set()
    for f in gone:
        index.discard(f)
    index.discard("never/added")
    for t in ("a", "a/b", "$x/a", "", "a//b", "b/a/b/a"):
        assert sorted(index.matching(t)) == sorted(f for f in filters - gone if ORACLE._matches(t, f))


D1 = "devices/d1/messages/devicebound/#"


@pytest.mark.parametrize(
    ("filters", "topic", "expected"),
    [
        ([D1], "devices/d1/messages/devicebound/%24.to=x", [D1]),
        ([D1], "devices/d2/messages/devicebound/x", []),
        (["a/#"], "a", ["a/#"]),  # `#` also matches its parent level
        (["#", "+/+"], "$iothub/twin", []),  # no wildcard-first filter matches a $ topic
        (["$iothub/twin/res/#"], "$iothub/twin/res/200/?$rid=1", ["$iothub/twin/res/#"]),
        (["a/+/c"], "a//c", ["a/+/c"]),  # `+` matches an empty level
    ],
)
def test_examples(filters: list[str], topic: str, expected: list[str]) -> None:
    index = FilterIndex()
    for f in filters:
        index.add(f)
    assert index.matching(topic) == expected

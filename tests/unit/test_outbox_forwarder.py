"""The forwarder's pure parts: the hub's JSON for a stored message (checked by the hub's own parser) and
the retry schedule."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from gateway.hub.backoff import next_backoff
from gateway.outbox.store import QueuedMessage
from gateway.upstream.forwarder import (
    BACKOFF_BASE,
    BACKOFF_CAP,
    ENCODE_SLICE_BYTES,
    encode_batch,
    leaves_room,
    wire_message,
    wire_text,
)
from hub_mock.ingest import parse_batch

STORED = QueuedMessage(7, "0123456789abcdef0123456789abcdef", "sensor-1", "telemetry",
                       "devices/sensor-1/messages/events/a=1", {"a": "1"}, b"\x00\xffhello", 1,
                       datetime(2027, 1, 15, 8, 0, 0, 250_000, tzinfo=UTC).timestamp())


def test_wire_message_is_the_hub_api_shape() -> None:
    wire = wire_message(STORED)
    assert wire == {
        "message_id": "0123456789abcdef0123456789abcdef",
        "device_id": "sensor-1",
        "enqueued_time": "2027-01-15T08:00:00.250000Z",
        "properties": {"a": "1"},
        "payload_b64": "AP9oZWxsbw==",
        "kind": "telemetry",
        "system_properties": {},
    }


@pytest.mark.parametrize(
    "message",
    [
        STORED,
        replace(STORED, properties={}),
        replace(STORED, payload=b""),
        # system properties ($.mid, $.ct, ...) split from the application's, text that JSON must escape
        replace(STORED, properties={"$.mid": "m-1", "$.ct": "application/json", "k\"ey": "va\\lue\n", "é": "ü"}),
        replace(STORED, properties={"$.cid": "c"}, message_id='quote"back\\slash', kind="telemetry"),
        replace(STORED, device_id="dev:1.(x)=@;$'", enqueued_at=0.0),
    ],
)
def test_wire_text_is_the_json_of_wire_message(message: QueuedMessage) -> None:
    assert json.loads(wire_text(message)) == wire_message(message)


@pytest.mark.parametrize("epoch", [0.0, 1.0, 0.9999996, 1_700_000_000.123456, 1_800_000_000.9999999, 1_767_225_599.5,
                                   datetime(2027, 1, 15, 8, 0, 0, 250_000, tzinfo=UTC).timestamp(), -0.25])
def test_iso_time_is_what_datetime_says(epoch: float) -> None:
    from gateway.upstream.forwarder import _iso_time

    expected = datetime.fromtimestamp(epoch, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    assert _iso_time(epoch) == expected


def test_the_hub_reads_back_what_was_stored() -> None:
    (telemetry,) = parse_batch({"messages": [wire_message(STORED)]})
    assert telemetry.message_id == STORED.message_id
    assert telemetry.device_id == STORED.device_id
    assert telemetry.enqueued_time == datetime(2027, 1, 15, 8, 0, 0, 250_000, tzinfo=UTC)
    assert telemetry.properties == STORED.properties
    assert telemetry.payload == STORED.payload


@pytest.mark.parametrize(
    ("attempt", "jitter", "seconds"),
    [
        (0, 0.0, 0.25),  # first retry: half the 0.5 s ceiling ...
        (0, 1.0, 0.5),  # ... up to the whole ceiling
        (1, 0.5, 0.75),
        (5, 1.0, 16.0),
        (6, 0.0, 15.0),  # the ceiling reached the 30 s cap
        (6, 1.0, 30.0),
        (1000, 1.0, 30.0),  # never beyond the cap, however long the outage
    ],
)
def test_retry_schedule(attempt: int, jitter: float, seconds: float) -> None:
    assert next_backoff(attempt, jitter, base=BACKOFF_BASE, cap=BACKOFF_CAP) == pytest.approx(seconds)


def _batch(count: int, payload_bytes: int) -> list[QueuedMessage]:
    return [QueuedMessage(i, f"{i:032x}", "sensor-1", "telemetry", "t", {}, b"x" * payload_bytes, 1, 0.0)
            for i in range(count)]


@pytest.mark.parametrize(
    ("count", "payload_bytes", "room"),
    [
        (1, 100, True),  # a trickle: the next read lingers so the stream fills a POST
        (499, 100, True),
        (500, 100, False),  # full by count: a backlog drains without waiting
        (10, 50_000, False),  # 500 KB: full by bytes (half the 1 MB limit)
        (10, 40_000, True),
    ],
)
def test_leaves_room(count: int, payload_bytes: int, room: bool) -> None:
    assert leaves_room(_batch(count, payload_bytes), 500, 1_000_000) is room


@pytest.mark.parametrize(("count", "size"), [(0, 10), (1, 10), (3, 100), (500, 2048), (40, ENCODE_SLICE_BYTES + 1)])
def test_a_batch_encoded_in_slices_is_the_same_json_as_one_dump(count: int, size: int) -> None:
    batch = [replace(STORED, seq=i, message_id=f"{i:032x}", payload=bytes([i % 256]) * size) for i in range(count)]
    body = asyncio.run(encode_batch(batch))
    assert json.loads(body) == {"messages": [wire_message(m) for m in batch]}
    if count:
        assert parse_batch(json.loads(body))[0].payload == batch[0].payload  # what the hub reads back


def test_encoding_a_big_batch_lets_the_event_loop_in_between_slices() -> None:
    """A flood's full batch must not hold the loop in one piece: other devices' PUBACKs wait behind it."""
    batch = [replace(STORED, seq=i, message_id=f"{i:032x}", payload=b"x" * 2048) for i in range(500)]

    async def scenario() -> int:
        ticks = 0
        done = False

        async def other_device() -> None:
            nonlocal ticks
            while not done:
                ticks += 1
                await asyncio.sleep(0)

        ticker = asyncio.ensure_future(other_device())
        await asyncio.sleep(0)
        await encode_batch(batch)
        done = True
        await ticker
        return ticks

    slices = 500 * 2048 // ENCODE_SLICE_BYTES
    assert asyncio.run(scenario()) >= slices - 1

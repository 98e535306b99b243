"""Topic authorization table for the IoT Hub MQTT dialect."""

from __future__ import annotations

import pytest

from gateway.auth.topics import DeviceTopics, TopicKind

DEV = DeviceTopics.for_device("TempSensor")


@pytest.mark.parametrize(
    ("topic", "kind", "reason"),
    [
        ("devices/TempSensor/messages/events/", TopicKind.TELEMETRY, "ok"),
        ("devices/TempSensor/messages/events", TopicKind.TELEMETRY, "ok"),
        ("devices/TempSensor/messages/events/$.ct=application%2Fjson&site=rig%201", TopicKind.TELEMETRY, "ok"),
        ("$iothub/twin/GET/?$rid=1", TopicKind.TWIN_GET, "ok"),
        ("$iothub/twin/PATCH/properties/reported/?$rid=42", TopicKind.TWIN_REPORTED, "ok"),
        ("$iothub/methods/res/200/?$rid=7", TopicKind.METHOD_RESPONSE, "ok"),
        ("devices/OtherSensor/messages/events/", TopicKind.DENIED, "other_device"),
        ("devices/tempsensor/messages/events/", TopicKind.DENIED, "other_device"),
        ("devices/TempSensor/messages/events/+", TopicKind.DENIED, "wildcard_in_publish"),
        ("devices/+/messages/events/", TopicKind.DENIED, "wildcard_in_publish"),
        ("#", TopicKind.DENIED, "wildcard_in_publish"),
        ("devices/TempSensor/messages/eventsX", TopicKind.DENIED, "unknown_topic"),
        ("devices/TempSensor/messages/devicebound/x", TopicKind.DENIED, "unknown_topic"),
        ("devices/TempSensor/messages/events/a=1&a", TopicKind.DENIED, "bad_property_bag"),
        ("$iothub/twin/GET/?$rid=", TopicKind.DENIED, "unknown_topic"),
        ("$iothub/methods/res/abc/?$rid=7", TopicKind.DENIED, "unknown_topic"),
        ("$iothub/methods/POST/x", TopicKind.DENIED, "unknown_topic"),
        ("$SYS/broker/uptime", TopicKind.DENIED, "unknown_topic"),
        ("sensors/temp", TopicKind.DENIED, "unknown_topic"),
    ],
)
def test_publish(topic: str, kind: TopicKind, reason: str) -> None:
    verdict = DEV.classify_publish(topic)
    assert (verdict.kind, verdict.reason, verdict.allowed) == (kind, reason, reason == "ok")


def test_property_bag_is_decoded() -> None:
    verdict = DEV.classify_publish("devices/TempSensor/messages/events/$.ct=application%2Fjson&site=rig%201")
    assert verdict.properties == {"$.ct": "application/json", "site": "rig 1"}


@pytest.mark.parametrize(
    ("topic_filter", "allowed"),
    [
        ("devices/TempSensor/messages/devicebound/#", True),
        ("devices/TempSensor/messages/devicebound/+", True),
        ("devices/TempSensor/messages/devicebound/alerts", True),
        ("$iothub/twin/res/#", True),
        ("$iothub/twin/PATCH/properties/desired/#", True),
        ("$iothub/methods/POST/#", True),
        ("#", False),
        ("+/#", False),
        ("devices/#", False),
        ("devices/+/messages/devicebound/#", False),
        ("devices/OtherSensor/messages/devicebound/#", False),
        ("devices/tempsensor/messages/devicebound/#", False),
        ("devices/TempSensor/messages/events/", False),
        ("devices/TempSensor/messages/devicebound/#/x", False),
        ("devices/TempSensor/messages/devicebound/a+", False),
        ("$iothub/#", False),
        ("$SYS/#", False),
    ],
)
def test_subscribe(topic_filter: str, allowed: bool) -> None:
    assert DEV.authorize_subscribe(topic_filter) is allowed

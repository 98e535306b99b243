"""Topic authorization table for the IoT Hub MQTT dialect."""

from __future__ import annotations

import pytest

from gateway.auth.topics import REFUSALS, DeviceTopics, TopicKind, filter_matches, split_properties

DEV = DeviceTopics.for_device("TempSensor")


@pytest.mark.parametrize(
    ("topic", "kind", "reason"),
    [
        # telemetry, every form
        ("devices/TempSensor/messages/events/", TopicKind.TELEMETRY, "ok"),
        ("devices/TempSensor/messages/events", TopicKind.TELEMETRY, "ok"),
        ("devices/TempSensor/messages/events/$.ct=application%2Fjson&site=rig%201", TopicKind.TELEMETRY, "ok"),
        ("devices/TempSensor/messages/events/$.mid=m1&$.cid=c1&$.uid=u&$.ce=utf-8&$.exp=2027-01-01&$.ifid=x",
         TopicKind.TELEMETRY, "ok"),
        ("devices/TempSensor/messages/events/mqtt-retain=true", TopicKind.TELEMETRY, "ok"),
        # twins and methods, every form
        ("$iothub/twin/GET/?$rid=1", TopicKind.TWIN_GET, "ok"),
        ("$iothub/twin/GET/?$rid=9f8e-guid-like", TopicKind.TWIN_GET, "ok"),
        ("$iothub/twin/PATCH/properties/reported/?$rid=42", TopicKind.TWIN_REPORTED, "ok"),
        ("$iothub/twin/PATCH/properties/reported/?$rid=42&$version=3", TopicKind.TWIN_REPORTED, "ok"),
        ("$iothub/methods/res/200/?$rid=7", TopicKind.METHOD_RESPONSE, "ok"),
        ("$iothub/methods/res/500/?$rid=abc", TopicKind.METHOD_RESPONSE, "ok"),
        # another device's telemetry or twin: only nameable through devices/{id}/...
        ("devices/OtherSensor/messages/events/", TopicKind.DENIED, "other_device"),
        ("devices/tempsensor/messages/events/", TopicKind.DENIED, "other_device"),
        ("devices/OtherSensor/twin/GET/?$rid=1", TopicKind.DENIED, "other_device"),
        ("devices/OtherSensor/messages/devicebound/", TopicKind.DENIED, "other_device"),
        # wildcards in a topic name (MQTT-3.3.2-2)
        ("devices/TempSensor/messages/events/+", TopicKind.DENIED, "wildcard_in_publish"),
        ("devices/+/messages/events/", TopicKind.DENIED, "wildcard_in_publish"),
        ("#", TopicKind.DENIED, "wildcard_in_publish"),
        ("$iothub/twin/GET/#", TopicKind.DENIED, "wildcard_in_publish"),
        ("$iothub/methods/res/+/?$rid=1", TopicKind.DENIED, "wildcard_in_publish"),
        # missing or empty $rid
        ("$iothub/twin/GET/?$rid=", TopicKind.DENIED, "missing_rid"),
        ("$iothub/twin/GET/?", TopicKind.DENIED, "missing_rid"),
        ("$iothub/twin/GET/", TopicKind.DENIED, "missing_rid"),
        ("$iothub/twin/GET", TopicKind.DENIED, "missing_rid"),
        ("$iothub/twin/GET/?rid=1", TopicKind.DENIED, "missing_rid"),
        ("$iothub/twin/PATCH/properties/reported/", TopicKind.DENIED, "missing_rid"),
        ("$iothub/twin/PATCH/properties/reported/?$version=1", TopicKind.DENIED, "missing_rid"),
        ("$iothub/methods/res/200/", TopicKind.DENIED, "missing_rid"),
        ("$iothub/methods/res/200/?$rid=", TopicKind.DENIED, "missing_rid"),
        ("$iothub/twin/GET/?$rid=" + "x" * 129, TopicKind.DENIED, "missing_rid"),
        # bad method status
        ("$iothub/methods/res/abc/?$rid=7", TopicKind.DENIED, "bad_status"),
        ("$iothub/methods/res//?$rid=7", TopicKind.DENIED, "bad_status"),
        ("$iothub/methods/res/200", TopicKind.DENIED, "missing_rid"),
        ("$iothub/methods/res/200/extra/?$rid=7", TopicKind.DENIED, "unknown_iothub_path"),
        ("$iothub/methods/res/2000000000/?$rid=7", TopicKind.DENIED, "bad_status"),
        # $iothub paths we do not serve (never forwarded as telemetry)
        ("$iothub/methods/POST/x", TopicKind.DENIED, "unknown_iothub_path"),
        ("$iothub/methods/POST/reboot/?$rid=1", TopicKind.DENIED, "unknown_iothub_path"),
        ("$iothub/twin/PATCH/properties/desired/?$rid=1", TopicKind.DENIED, "unknown_iothub_path"),
        ("$iothub/twin/res/200/?$rid=1", TopicKind.DENIED, "unknown_iothub_path"),
        ("$iothub/twin/DELETE/?$rid=1", TopicKind.DENIED, "unknown_iothub_path"),
        ("$iothub/streams/POST/x", TopicKind.DENIED, "unknown_iothub_path"),
        ("$iothub/", TopicKind.DENIED, "unknown_iothub_path"),
        # reserved or malformed property names (telemetry)
        ("devices/TempSensor/messages/events/iothub-connection-device-id=victim", TopicKind.DENIED,
         "reserved_property"),
        ("devices/TempSensor/messages/events/IoTHub-MessageLocks=1", TopicKind.DENIED, "reserved_property"),
        ("devices/TempSensor/messages/events/$.cdid=victim", TopicKind.DENIED, "reserved_property"),
        ("devices/TempSensor/messages/events/$.cmid=m", TopicKind.DENIED, "reserved_property"),
        ("devices/TempSensor/messages/events/$.on=output1", TopicKind.DENIED, "reserved_property"),
        ("devices/TempSensor/messages/events/$.to=/devices/x", TopicKind.DENIED, "reserved_property"),
        ("devices/TempSensor/messages/events/%00=x", TopicKind.DENIED, "bad_property_name"),
        ("devices/TempSensor/messages/events/=x", TopicKind.DENIED, "bad_property_name"),
        ("devices/TempSensor/messages/events/k=%00", TopicKind.DENIED, "bad_property_name"),
        ("devices/TempSensor/messages/events/k%0A=v", TopicKind.DENIED, "bad_property_name"),
        ("devices/TempSensor/messages/events/a=1&a", TopicKind.DENIED, "bad_property_bag"),
        ("devices/TempSensor/messages/events/" + "&".join(f"k{i}=v" for i in range(65)), TopicKind.DENIED,
         "bad_property_bag"),
        # not IoT Hub topics at all
        ("devices/TempSensor/messages/eventsX", TopicKind.DENIED, "unknown_topic"),
        ("devices/TempSensor/messages/devicebound/x", TopicKind.DENIED, "unknown_topic"),
        ("$SYS/broker/uptime", TopicKind.DENIED, "unknown_topic"),
        ("sensors/temp", TopicKind.DENIED, "unknown_topic"),
        ("", TopicKind.DENIED, "unknown_topic"),
    ],
)
def test_publish(topic: str, kind: TopicKind, reason: str) -> None:
    verdict = DEV.classify_publish(topic)
    assert (verdict.kind, verdict.reason, verdict.allowed) == (kind, reason, reason == "ok")
    # Every refusal says what to do about it.
    assert bool(verdict.sentence) is (reason != "ok")


def test_every_refusal_reason_has_a_sentence() -> None:
    assert all(sentence.strip() for sentence in REFUSALS.values())


def test_twin_and_method_topics_carry_rid_and_status() -> None:
    assert DEV.classify_publish("$iothub/twin/GET/?$rid=17").rid == "17"
    response = DEV.classify_publish("$iothub/methods/res/404/?$rid=ab12")
    assert (response.rid, response.status) == ("ab12", 404)


def test_system_and_application_properties_split() -> None:
    verdict = DEV.classify_publish("devices/TempSensor/messages/events/$.mid=m1&$.ct=application%2Fjson&site=a")
    system, application = split_properties(verdict.properties.items())
    assert system == {"$.mid": "m1", "$.ct": "application/json"}
    assert application == {"site": "a"}


@pytest.mark.parametrize(
    ("topic_filter", "topic", "matches"),
    [
        ("$iothub/twin/res/#", "$iothub/twin/res/200/?$rid=1", True),
        ("$iothub/methods/POST/#", "$iothub/methods/POST/reboot/?$rid=1", True),
        ("$iothub/methods/POST/+", "$iothub/methods/POST/reboot/?$rid=1", False),
        ("$iothub/twin/PATCH/properties/desired/#", "$iothub/twin/PATCH/properties/desired/?$version=2", True),
        ("$iothub/twin/res/#", "$iothub/twin/PATCH/properties/desired/?$version=2", False),
        ("#", "$iothub/twin/res/200/?$rid=1", False),
        ("+/twin/res/#", "$iothub/twin/res/200/?$rid=1", False),
        ("a/+/c", "a/b/c", True),
        ("a/#", "a", True),
    ],
)
def test_filter_matches(topic_filter: str, topic: str, matches: bool) -> None:
    assert filter_matches(topic_filter, topic) is matches


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

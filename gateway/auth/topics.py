"""Topic authorization for the IoT Hub MQTT dialect that edgeHub speaks, per device.

A device may publish to its own telemetry topic, twin GET/PATCH-reported and method responses, and
subscribe to its own cloud-to-device topic, twin responses, desired-property patches and method
requests. Everything else is denied. edgeHub does not check the device id in a publish topic; we do.
Runs for every packet, so each check is a prefix test or set lookup against strings built once.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

# A property bag is a short query string; more than this is abuse, not telemetry metadata.
MAX_PROPERTIES = 64

TWIN_GET = "$iothub/twin/GET/?$rid="
TWIN_REPORTED = "$iothub/twin/PATCH/properties/reported/?$rid="
METHOD_RESPONSE = "$iothub/methods/res/"

# Subscriptions shared by every device (their messages are addressed per connection by the hub).
SHARED_FILTER_PREFIXES = ("$iothub/twin/res/", "$iothub/twin/PATCH/properties/desired/", "$iothub/methods/POST/")


class TopicKind(enum.Enum):
    TELEMETRY = "telemetry"
    TWIN_GET = "twin_get"
    TWIN_REPORTED = "twin_reported"
    METHOD_RESPONSE = "method_response"
    DENIED = "denied"


@dataclass(frozen=True, slots=True)
class PublishVerdict:
    allowed: bool
    kind: TopicKind
    reason: str = "ok"
    properties: dict[str, str] = field(default_factory=dict)


class DeviceTopics:
    """The topics one device may use; built once per connection."""

    __slots__ = ("device_id", "devicebound", "telemetry")

    def __init__(self, device_id: str) -> None:
        self.device_id = device_id
        self.telemetry = f"devices/{device_id}/messages/events"
        self.devicebound = f"devices/{device_id}/messages/devicebound/"

    @classmethod
    def for_device(cls, device_id: str) -> DeviceTopics:
        return cls(device_id)

    def classify_publish(self, topic: str) -> PublishVerdict:
        """Which IoT Hub topic family `topic` is for this device, or why it is denied."""
        if "+" in topic or "#" in topic:
            return _deny("wildcard_in_publish")
        if topic.startswith(self.telemetry):
            rest = topic[len(self.telemetry):]
            if rest in ("", "/"):
                return PublishVerdict(True, TopicKind.TELEMETRY)
            if not rest.startswith("/"):
                return _deny("unknown_topic")
            properties = _property_bag(rest[1:])
            if properties is None:
                return _deny("bad_property_bag")
            return PublishVerdict(True, TopicKind.TELEMETRY, properties=properties)
        if topic.startswith("devices/"):
            other = topic[8:].split("/", 1)[0]
            return _deny("other_device" if other != self.device_id else "unknown_topic")
        if topic.startswith(TWIN_GET) and len(topic) > len(TWIN_GET):
            return PublishVerdict(True, TopicKind.TWIN_GET)
        if topic.startswith(TWIN_REPORTED) and len(topic) > len(TWIN_REPORTED):
            return PublishVerdict(True, TopicKind.TWIN_REPORTED)
        if topic.startswith(METHOD_RESPONSE):
            status, sep, rid = topic[len(METHOD_RESPONSE):].partition("/?$rid=")
            if sep and status.isdigit() and rid:
                return PublishVerdict(True, TopicKind.METHOD_RESPONSE)
        return _deny("unknown_topic")

    def authorize_subscribe(self, topic_filter: str) -> bool:
        """May this device subscribe to `topic_filter`? Only its own and the per-connection $iothub ones."""
        for prefix in (self.devicebound, *SHARED_FILTER_PREFIXES):
            if topic_filter.startswith(prefix):
                return _wildcards_well_formed(topic_filter[len(prefix):])
        return False


def _deny(reason: str) -> PublishVerdict:
    return PublishVerdict(False, TopicKind.DENIED, reason)


def _property_bag(bag: str) -> dict[str, str] | None:
    """Decode IoT Hub's URL-encoded property bag ("k=v&k2=v2"); None if it is malformed."""
    if not bag:
        return {}
    try:
        pairs = parse_qsl(bag, keep_blank_values=True, strict_parsing=True, max_num_fields=MAX_PROPERTIES)
    except ValueError:
        return None
    return dict(pairs)


def _wildcards_well_formed(rest: str) -> bool:
    """The part of a filter after an allowed prefix: '#' only as the last level, '+' only as a whole level."""
    levels = rest.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return False
        if "+" in level and level != "+":
            return False
    return True

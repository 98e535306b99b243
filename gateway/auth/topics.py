"""Topic authorization for the IoT Hub MQTT dialect that edgeHub speaks, per device.

A device may publish to its own telemetry topic, twin GET/PATCH-reported and method responses, and
subscribe to its own cloud-to-device topic, twin responses, desired-property patches and method
requests. Everything else is denied, with a reason code (`REFUSALS` holds the sentence for each).
edgeHub does not check the device id in a publish topic; we do.

The $iothub topics carry no device id: replies are addressed per connection, by the gateway (see
gateway/twin/). So "another device's twin" can only be named through `devices/{other}/...`, and is
refused there.

Property bags (telemetry only): IoT Hub reserves `iothub-*` and the `$.`-prefixed names for itself;
a device may set only the system properties in `DEVICE_SYSTEM_PROPERTIES`. Any other reserved name is
refused, never stored as an application property (a device claiming
`iothub-connection-device-id=victim` would otherwise speak for another device).

Runs for every packet, so each check is a prefix test or set lookup against strings built once.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

# A property bag is a short query string; more than this is abuse, not telemetry metadata.
MAX_PROPERTIES = 64
# IoT Hub's request ids are short counters or GUIDs; 128 keeps a hostile one from filling our maps.
MAX_RID = 128

TWIN_GET = "$iothub/twin/GET/?"
TWIN_REPORTED = "$iothub/twin/PATCH/properties/reported/?"
METHOD_RESPONSE = "$iothub/methods/res/"
IOTHUB = "$iothub/"

# What the gateway sends to a device (the device subscribes to the filters below).
TWIN_RESPONSE = "$iothub/twin/res/{status}/?$rid={rid}"
TWIN_RESPONSE_VERSIONED = "$iothub/twin/res/{status}/?$rid={rid}&$version={version}"
DESIRED_PATCH = "$iothub/twin/PATCH/properties/desired/?$version={version}"
METHOD_REQUEST = "$iothub/methods/POST/{method}/?$rid={rid}"

# Subscriptions shared by every device (their messages are addressed per connection by the gateway).
SHARED_FILTER_PREFIXES = ("$iothub/twin/res/", "$iothub/twin/PATCH/properties/desired/", "$iothub/methods/POST/")

# System properties a device may set on telemetry (IoT Hub's MQTT names): message id, correlation id,
# user id, content type, content encoding, expiry, Plug and Play interface id (what the SDKs send).
# They travel as system properties, not application ones.
DEVICE_SYSTEM_PROPERTIES = frozenset({"$.mid", "$.cid", "$.uid", "$.ct", "$.ce", "$.exp", "$.ifid"})
# Application property edgeHub adds when a device publishes with retain=1 (we never retain).
RETAIN_PROPERTY = "mqtt-retain"

REFUSALS: dict[str, str] = {
    "wildcard_in_publish": "a topic name may not contain '+' or '#' (MQTT-3.3.2-2); publish to a concrete topic",
    "other_device": "a device may publish only to its own devices/{id}/... topics; use the client id's",
    "unknown_topic": "not an IoT Hub device topic; telemetry goes to devices/{id}/messages/events/",
    "unknown_iothub_path": "this $iothub topic is not one IoT Hub serves to devices (twin GET, reported "
                           "PATCH, method response); check the SDK version",
    "missing_rid": "twin and method topics need a non-empty $rid request id (at most 128 characters)",
    "bad_status": "a method response names its status as a number: $iothub/methods/res/{status}/?$rid={rid}",
    "bad_property_bag": "the property bag is not a valid URL-encoded query string of at most 64 pairs",
    "reserved_property": "IoT Hub reserves iothub-* and $.* property names (a device may set only $.mid, "
                         "$.cid, $.uid, $.ct, $.ce, $.exp, $.ifid); rename the property",
    "bad_property_name": "property names and values may not be empty names or hold control characters",
}


class TopicKind(enum.Enum):
    TELEMETRY = "telemetry"
    TWIN_GET = "twin_get"
    TWIN_REPORTED = "twin_reported"
    METHOD_RESPONSE = "method_response"
    DENIED = "denied"


@dataclass(frozen=True, slots=True)
class PublishVerdict:
    """`properties` holds system ($.*) and application properties together, as the topic carried them
    (split_properties separates them); `rid`/`status` are set for twin and method topics."""

    allowed: bool
    kind: TopicKind
    reason: str = "ok"
    properties: dict[str, str] = field(default_factory=dict)
    rid: str = ""
    status: int = 0

    @property
    def sentence(self) -> str:
        """What the device should do about a refusal (empty when allowed)."""
        return REFUSALS.get(self.reason, "")


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
            refused = _refused_property(properties)
            if refused is not None:
                return _deny(refused)
            return PublishVerdict(True, TopicKind.TELEMETRY, properties=properties)
        if topic.startswith("devices/"):
            other = topic[8:].split("/", 1)[0]
            return _deny("other_device" if other != self.device_id else "unknown_topic")
        if not topic.startswith(IOTHUB):
            return _deny("unknown_topic")
        if topic.startswith(TWIN_GET):
            return _with_rid(TopicKind.TWIN_GET, topic[len(TWIN_GET):])
        if topic.startswith(TWIN_REPORTED):
            return _with_rid(TopicKind.TWIN_REPORTED, topic[len(TWIN_REPORTED):])
        if topic.startswith(METHOD_RESPONSE):
            status, _slash, query = topic[len(METHOD_RESPONSE):].partition("/")
            if not (status.isascii() and status.isdigit() and len(status) <= 9):
                return _deny("bad_status")
            if query and not query.startswith("?"):
                return _deny("unknown_iothub_path")
            verdict = _with_rid(TopicKind.METHOD_RESPONSE, query[1:])
            return verdict if not verdict.allowed else PublishVerdict(
                True, TopicKind.METHOD_RESPONSE, rid=verdict.rid, status=int(status))
        if topic.startswith(("$iothub/twin/GET", "$iothub/twin/PATCH/properties/reported")):
            return _deny("missing_rid")
        return _deny("unknown_iothub_path")

    def authorize_subscribe(self, topic_filter: str) -> bool:
        """May this device subscribe to `topic_filter`? Only its own and the per-connection $iothub ones."""
        for prefix in (self.devicebound, *SHARED_FILTER_PREFIXES):
            if topic_filter.startswith(prefix):
                return _wildcards_well_formed(topic_filter[len(prefix):])
        return False


def split_properties(pairs: Iterable[tuple[str, str]]) -> tuple[dict[str, str], dict[str, str]]:
    """(system, application) properties of a message whose property bag holds both."""
    system: dict[str, str] = {}
    application: dict[str, str] = {}
    for key, value in pairs:
        (system if key in DEVICE_SYSTEM_PROPERTIES else application)[key] = value
    return system, application


def filter_matches(topic_filter: str, topic: str) -> bool:
    """MQTT 3.1.1 topic matching (4.7): '+' one level, '#' the rest; wildcards never match a leading '$'."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    levels = topic.split("/")
    wanted = topic_filter.split("/")
    for i, level in enumerate(wanted):
        if level == "#":
            return True
        if i >= len(levels) or (level != "+" and level != levels[i]):
            return False
    return len(levels) == len(wanted)


def _deny(reason: str) -> PublishVerdict:
    return PublishVerdict(False, TopicKind.DENIED, reason)


def _with_rid(kind: TopicKind, query: str) -> PublishVerdict:
    """A $iothub topic's query ("$rid=1&..."): it must name a request id."""
    params = _property_bag(query)
    rid = (params or {}).get("$rid", "")
    if not rid or len(rid) > MAX_RID or not rid.isprintable():
        return _deny("missing_rid")
    return PublishVerdict(True, kind, rid=rid)


def _property_bag(bag: str) -> dict[str, str] | None:
    """Decode IoT Hub's URL-encoded property bag ("k=v&k2=v2"); None if it is malformed."""
    if not bag:
        return {}
    try:
        pairs = parse_qsl(bag, keep_blank_values=True, strict_parsing=True, max_num_fields=MAX_PROPERTIES)
    except ValueError:
        return None
    return dict(pairs)


def _refused_property(properties: dict[str, str]) -> str | None:
    """Why a telemetry property bag may not be taken from a device, or None."""
    for key, value in properties.items():
        if not key or not key.isprintable() or not value.isprintable():
            return "bad_property_name"
        lowered = key.lower()
        if lowered.startswith("iothub-") or (key.startswith("$") and key not in DEVICE_SYSTEM_PROPERTIES):
            return "reserved_property"
    return None


def _wildcards_well_formed(rest: str) -> bool:
    """The part of a filter after an allowed prefix: '#' only as the last level, '+' only as a whole level."""
    levels = rest.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return False
        if "+" in level and level != "+":
            return False
    return True

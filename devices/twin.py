"""TempSensor's side of twins and direct methods, as pure functions over topics and payloads.

At start the sensor reports its firmware version and reading interval, and GETs its twin; a desired
`interval` (seconds) changes how often it reads, and it reports the interval it now uses. It answers
two direct methods: `blink` (the LED, {"times": n}) and `reboot` (answers, then reconnects).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

FIRMWARE_VERSION = "1.3.0"
# A desired interval outside this range is refused (reported back as an error, the old one kept).
MIN_INTERVAL, MAX_INTERVAL = 0.1, 3600.0

SUBSCRIPTIONS = ("$iothub/twin/res/#", "$iothub/twin/PATCH/properties/desired/#", "$iothub/methods/POST/#")
TWIN_RES = "$iothub/twin/res/"
DESIRED = "$iothub/twin/PATCH/properties/desired/"
METHOD = "$iothub/methods/POST/"


@dataclass(frozen=True, slots=True)
class Incoming:
    """One message on a twin or method topic. kind: twin_response | desired | method | other."""

    kind: str
    status: int = 0
    rid: str = ""
    version: int = 0
    method: str = ""


def classify(topic: str) -> Incoming:
    path, _, query = topic.partition("?")
    params = dict(parse_qsl(query, keep_blank_values=True))
    if path.startswith(TWIN_RES):
        status = path[len(TWIN_RES):].strip("/")
        return Incoming("twin_response", status=int(status) if status.isdigit() else 0, rid=params.get("$rid", ""))
    if path.startswith(DESIRED):
        version = params.get("$version", "0")
        return Incoming("desired", version=int(version) if version.isdigit() else 0)
    if path.startswith(METHOD):
        return Incoming("method", method=path[len(METHOD):].strip("/"), rid=params.get("$rid", ""))
    return Incoming("other")


def get_topic(rid: int) -> str:
    return f"$iothub/twin/GET/?$rid={rid}"


def report_topic(rid: int) -> str:
    return f"$iothub/twin/PATCH/properties/reported/?$rid={rid}"


def method_response_topic(status: int, rid: str) -> str:
    return f"$iothub/methods/res/{status}/?$rid={rid}"


def startup_report(interval: float) -> bytes:
    return json.dumps({"firmware": FIRMWARE_VERSION, "interval": interval}).encode()


def desired_interval(desired: Any) -> tuple[float | None, str]:
    """The `interval` a desired section or patch asks for: (seconds, "") / (None, "") if it names none /
    (None, why) if it names one this sensor refuses."""
    if not isinstance(desired, dict) or "interval" not in desired:
        return None, ""
    value = desired["interval"]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None, f"interval must be a number of seconds, got {value!r}"
    if not MIN_INTERVAL <= value <= MAX_INTERVAL:
        return None, f"interval must be within {MIN_INTERVAL:g}..{MAX_INTERVAL:g} s, got {value:g}"
    return float(value), ""


def answer_method(name: str, payload: bytes) -> tuple[int, dict[str, Any]]:
    """(status, body) for a direct method call."""
    try:
        request = json.loads(payload) if payload else None
    except ValueError:
        return 400, {"message": "the payload is not JSON"}
    if name == "blink":
        times = request.get("times", 1) if isinstance(request, dict) else 1
        if isinstance(times, bool) or not isinstance(times, int) or not 1 <= times <= 100:
            return 400, {"message": "times must be a whole number within 1..100"}
        return 200, {"blinked": times}
    if name == "reboot":
        return 200, {"rebooting": True, "firmware": FIRMWARE_VERSION}
    return 404, {"message": f"TempSensor has no method {name!r}; it answers blink and reboot"}

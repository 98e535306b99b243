"""Device ids and the IoT Hub MQTT username: what a device claims at CONNECT, checked as text."""

from __future__ import annotations

import re
import string

# IoT Hub device ids: up to 128 ASCII letters, digits and the characters the identity registry documents.
# The one rule for the gateway, its config checks and hub-mock.
MAX_DEVICE_ID = 128
DEVICE_ID_SPECIALS = frozenset("-:.+%_#*?!(),=@;$'")
# What IoT Hub allows but a device connecting here may not use: '+' and '#' are MQTT wildcards, and a
# device id becomes a topic level (devices/{id}/messages/...).
TOPIC_UNSAFE = frozenset("+#")
_ALLOWED = frozenset(string.ascii_letters + string.digits) | (DEVICE_ID_SPECIALS - TOPIC_UNSAFE)


_IOT_HUB_ID = re.compile(
    "[A-Za-z0-9" + "".join(re.escape(ch) for ch in sorted(DEVICE_ID_SPECIALS)) + f"]{{1,{MAX_DEVICE_ID}}}")


def is_iot_hub_device_id(text: str) -> bool:
    """IoT Hub's own rule (the registry accepts these; the front door also refuses TOPIC_UNSAFE).
    A compiled class, not a test per character: hub-mock checks every forwarded message's id."""
    return _IOT_HUB_ID.fullmatch(text) is not None


def validate_device_id(device_id: str) -> str | None:
    """None if `device_id` is a valid device id, else what is wrong with it."""
    if not device_id:
        return "the client id is empty (a device must use its device id)"
    if len(device_id) > MAX_DEVICE_ID:
        return f"the client id is {len(device_id)} characters long; device ids have at most {MAX_DEVICE_ID}"
    bad = sorted(set(device_id) - _ALLOWED)
    if bad:
        shown = ", ".join(repr(ch) for ch in bad[:5])
        return f"the client id contains characters not allowed in a device id: {shown}"
    return None


def username_device(username: str | None) -> tuple[bool, str | None]:
    """(well-formed, device id named by the username). An absent or empty username names nobody.

    Accepted forms: "" / absent (generic MQTT clients), "{deviceId}", and IoT Hub's
    "{hostname}/{deviceId}/?api-version=..." (also without "?" as older SDKs send it).
    """
    if not username:
        return True, None
    if "/" not in username:
        return True, username
    parts = username.split("/")
    if len(parts) < 3 or not parts[0] or not parts[1]:
        return False, None
    tail = "/".join(parts[2:])
    if tail and not (tail.startswith("?") or tail.startswith("api-version")):
        # "{hostname}/{deviceId}/{moduleId}/..." is a module identity; modules are not child devices.
        return False, None
    return True, parts[1]

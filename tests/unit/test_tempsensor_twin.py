"""TempSensor's twin and method handling (devices/twin.py), table-tested."""

from __future__ import annotations

import json
from typing import Any

import pytest

from devices import twin


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        ("$iothub/twin/res/200/?$rid=7", twin.Incoming("twin_response", status=200, rid="7")),
        ("$iothub/twin/res/204/?$rid=8&$version=3", twin.Incoming("twin_response", status=204, rid="8")),
        ("$iothub/twin/PATCH/properties/desired/?$version=4", twin.Incoming("desired", version=4)),
        ("$iothub/methods/POST/blink/?$rid=ab", twin.Incoming("method", rid="ab", method="blink")),
        ("devices/TempSensor/messages/devicebound/x", twin.Incoming("other")),
    ],
)
def test_classify(topic: str, expected: twin.Incoming) -> None:
    assert twin.classify(topic) == expected


@pytest.mark.parametrize(
    ("desired", "interval", "refused"),
    [
        ({"interval": 2}, 2.0, False),
        ({"interval": 0.5, "$version": 3}, 0.5, False),
        ({"other": 1}, None, False),
        (None, None, False),
        ({"interval": 0}, None, True),
        ({"interval": 99999}, None, True),
        ({"interval": "fast"}, None, True),
        ({"interval": True}, None, True),
    ],
)
def test_desired_interval(desired: Any, interval: float | None, refused: bool) -> None:
    got, why = twin.desired_interval(desired)
    assert got == interval
    assert bool(why) is refused


@pytest.mark.parametrize(
    ("name", "payload", "status", "body"),
    [
        ("blink", b'{"times": 3}', 200, {"blinked": 3}),
        ("blink", b"", 200, {"blinked": 1}),
        ("blink", b'{"times": 0}', 400, None),
        ("blink", b"not json", 400, None),
        ("reboot", b"null", 200, {"rebooting": True, "firmware": twin.FIRMWARE_VERSION}),
        ("selfdestruct", b"{}", 404, None),
    ],
)
def test_answer_method(name: str, payload: bytes, status: int, body: dict[str, Any] | None) -> None:
    got_status, got_body = twin.answer_method(name, payload)
    assert got_status == status
    if body is not None:
        assert got_body == body
    else:
        assert got_body["message"]


def test_startup_report_names_firmware_and_interval() -> None:
    assert json.loads(twin.startup_report(1.5)) == {"firmware": twin.FIRMWARE_VERSION, "interval": 1.5}

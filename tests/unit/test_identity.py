"""Device id and username rules."""

from __future__ import annotations

import pytest

from gateway.auth.identity import username_device, validate_device_id


@pytest.mark.parametrize(
    ("device_id", "ok"),
    [
        ("TempSensor", True),
        ("sensor-01.rig_7:a@b$c'(x)", True),
        ("a" * 128, True),
        ("a" * 129, False),
        ("", False),
        ("a/b", False),
        ("a+b", False),
        ("a#b", False),
        ("a\x00b", False),
        ("tab\there", False),
        ("del\x7f", False),
        ("ünïcode", False),
        ("space here", False),
    ],
)
def test_device_ids(device_id: str, ok: bool) -> None:
    assert (validate_device_id(device_id) is None) is ok


@pytest.mark.parametrize(
    ("username", "expected"),
    [
        (None, (True, None)),
        ("", (True, None)),
        ("TempSensor", (True, "TempSensor")),
        ("hub.azure-devices.net/TempSensor/?api-version=2021-04-12", (True, "TempSensor")),
        ("hub.azure-devices.net/TempSensor/api-version=2016-11-14", (True, "TempSensor")),
        ("hub.azure-devices.net/TempSensor/", (True, "TempSensor")),
        ("hub.azure-devices.net/TempSensor/module1/?api-version=2021-04-12", (False, None)),
        ("hub.azure-devices.net//?api-version=1", (False, None)),
        ("hub/TempSensor", (False, None)),
    ],
)
def test_usernames(username: str | None, expected: tuple[bool, str | None]) -> None:
    assert username_device(username) == expected


def test_one_device_id_rule_for_gateway_config_and_hub() -> None:
    # IoT Hub's documented characters; the front door refuses only the MQTT wildcards among them.
    from gateway import config_checks
    from gateway.auth import identity
    from hub_mock.registry import Invalid, check_id

    documented = "-:.+%_#*?!(),=@;$'"
    assert set(documented) == identity.DEVICE_ID_SPECIALS
    for ch in documented:
        text = f"dev{ch}1"
        assert identity.is_iot_hub_device_id(text)
        assert config_checks.validate_device_id(text) is None
        assert check_id("device", text) == text
        assert (identity.validate_device_id(text) is None) is (ch not in identity.TOPIC_UNSAFE)
    for bad in ("dev/1", "dév", "", "x" * 129):
        assert not identity.is_iot_hub_device_id(bad)
        assert config_checks.validate_device_id(bad) is not None
        assert identity.validate_device_id(bad) is not None
        with pytest.raises(Invalid):
            check_id("device", bad)

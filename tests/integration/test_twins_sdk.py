"""Device twins and direct methods with Microsoft's own device SDK (azure-iot-device 2.x), through a
real gateway process to a real hub-mock process and back: online, with the hub down, and across a
kill -9 of the gateway while the hub is down.

The SDK dials port 8883 only, so each test holds the machine-wide 8883 lock (tests/azure_sdk/sdk.py).
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.azure_sdk.sdk import SdkDevice, port_8883, sdk_python
from tests.clients import DeviceFiles
from tests.gatewayproc import GatewayProcess
from tests.hubproc import HubProcess, run_cli

pytestmark = [pytest.mark.integration, pytest.mark.azure_sdk, pytest.mark.timeout(300)]


def wait_for(cond: Callable[[], object], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module", autouse=True)
def _sdk_venv() -> None:
    sdk_python()  # build it once, outside any test's timeout


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubProcess]:
    with HubProcess.start(tmp_path / "hub") as running:
        yield running


@pytest.fixture
def gateway(tmp_path: Path, hub: HubProcess) -> Iterator[GatewayProcess]:
    with port_8883() as port, GatewayProcess.start(tmp_path / "gw", hub, port=port) as gw:
        gw.wait_synced()
        yield gw


def sdk_device(gw: GatewayProcess, tmp: Path, device_id: str, answer: int = 200) -> SdkDevice:
    assert gw.hub is not None
    cert = gw.register_self_signed(device_id)
    files = DeviceFiles.write(cert, tmp, device_id)
    return SdkDevice(gw.hub.hostname, device_id, files.cert, files.key, gw.root, answer=answer)


def hub_messages(hub: HubProcess, device_id: str) -> list[dict[str, object]]:
    return list(hub.admin.messages(device_id)["messages"])


def test_get_twin_and_reported_patch_round_trip_through_the_gateway(gateway: GatewayProcess, hub: HubProcess,
                                                                     tmp_path: Path) -> None:
    dev = sdk_device(gateway, tmp_path, "sdk-1")
    try:
        twin = dev.get_twin()
        assert twin["desired"]["$version"] == 1
        assert twin["reported"]["$version"] == 1
        dev.patch({"firmware": "1.2.3", "interval": 10})
        twin = dev.get_twin()
        assert twin["reported"]["firmware"] == "1.2.3"
        assert twin["reported"]["$version"] == 2
        dev.command("send", payload="a reading")
    finally:
        dev.close()
    shown = hub.admin.call("GET", "/admin/twins/sdk-1")
    reported = shown["properties"]["reported"]
    assert reported["firmware"] == "1.2.3"
    assert reported["$version"] == 2
    assert reported["$metadata"]["firmware"]["$lastUpdated"].endswith("Z")
    # Telemetry stays telemetry, and twin traffic never becomes telemetry.
    wait_for(lambda: hub_messages(hub, "sdk-1"), what="the reading at the hub")
    messages = hub_messages(hub, "sdk-1")
    assert [m["kind"] for m in messages] == ["telemetry"]
    assert [base64.b64decode(str(m["payload_b64"])) for m in messages] == [b"a reading"]


def test_desired_patch_and_direct_method_reach_the_sdk_handlers(gateway: GatewayProcess, hub: HubProcess,
                                                               tmp_path: Path) -> None:
    dev = sdk_device(gateway, tmp_path, "sdk-2", answer=201)
    try:
        dev.get_twin()  # the SDK subscribes to the twin topics on first use
        wait_for(lambda: _desired_set(hub, "sdk-2", {"interval": 7}), what="desired patch accepted")
        event = dev.wait_event("desired")
        if event["patch"] == {"$version": 1}:
            # The SDK's "ensure desired properties" GET after connecting hands the app the twin's
            # desired section once as an artificial patch (azure-iot-device EnsureDesiredPropertiesStage).
            event = dev.wait_event("desired")
        assert event["patch"] == {"interval": 7, "$version": 2}, event
        invoked = run_cli("invoke", "sdk-2", "blink", "--payload", '{"times": 3}', "--timeout", "10",
                          "--admin-url", hub.admin.url)
        assert invoked.returncode == 0, invoked.stderr
        assert json.loads(invoked.stdout) == {"status": 201, "payload": {"echo": {"times": 3}, "method": "blink"}}
        assert dev.wait_event("method")["name"] == "blink"
    finally:
        dev.close()
    # Not connected any more: the gateway says so at once, and the hub answers 404.
    invoked = run_cli("invoke", "sdk-2", "blink", "--timeout", "10", "--admin-url", hub.admin.url)
    assert invoked.returncode == 1, invoked.stdout
    assert "404 device_not_online" in invoked.stderr
    assert all(m["kind"] == "telemetry" for m in hub_messages(hub, "sdk-2"))
    assert hub_messages(hub, "sdk-2") == []


def _desired_set(hub: HubProcess, device_id: str, patch: dict[str, object]) -> bool:
    result = run_cli("twin", "set-desired", device_id, json.dumps(patch), "--admin-url", hub.admin.url)
    assert result.returncode == 0, result.stderr
    return True


def test_twin_get_and_reported_patch_with_the_hub_down_survive_kill_9(gateway: GatewayProcess, hub: HubProcess,
                                                                      tmp_path: Path) -> None:
    dev = sdk_device(gateway, tmp_path, "sdk-3")
    try:
        dev.patch({"firmware": "1.0.0"})
        online = dev.get_twin()
        hub.stop()
        offline = dev.get_twin()  # answered from the cache
        assert offline == online
        gateway.wait_log("answered from the cached copy")
        dev.patch({"firmware": "2.0.0", "mode": "offline"})  # acknowledged once durably queued
        assert dev.get_twin()["reported"]["firmware"] == "2.0.0"  # the cache reflects it at once
    finally:
        dev.close()
    gateway.kill()
    gateway.restart()
    hub.restart()
    wait_for(lambda: len(hub.admin.call("GET", "/admin/twins/sdk-3/reported-patches")["patches"]) >= 2,
             what="the queued patch at the hub")
    time.sleep(2)  # a second delivery, if there were one, would land by now
    patches = hub.admin.call("GET", "/admin/twins/sdk-3/reported-patches")["patches"]
    assert [p["patch"] for p in patches] == [{"firmware": "1.0.0"}, {"firmware": "2.0.0", "mode": "offline"}]
    reported = hub.admin.call("GET", "/admin/twins/sdk-3")["properties"]["reported"]
    assert reported["firmware"] == "2.0.0"
    assert reported["mode"] == "offline"
    assert reported["$version"] == 3
    assert hub_messages(hub, "sdk-3") == []

"""Twins and direct methods through a real gateway and hub-mock, with paho and the real `tempsensor`:
one device's twin answers never reach another, reserved property names never reach the hub, desired
state set while a device was away is what it GETs (also from the cache), a method behind a gateway
that is gone fails at once, and TempSensor follows its twin and answers its methods.
"""

from __future__ import annotations

import base64
import json
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from tests.clients import DeviceFiles, PahoDevice
from tests.gatewayproc import HOSTNAME, GatewayProcess
from tests.hubproc import HubProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

TEMPSENSOR = str(Path(sys.executable).with_name("tempsensor"))


def wait_for(cond: Callable[[], object], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubProcess]:
    with HubProcess.start(tmp_path / "hub") as running:
        yield running


@pytest.fixture
def gateway(tmp_path: Path, hub: HubProcess) -> Iterator[GatewayProcess]:
    with GatewayProcess.start(tmp_path / "gw", hub) as gw:
        gw.wait_synced()
        yield gw


def device(gw: GatewayProcess, tmp: Path, device_id: str, files: DeviceFiles | None = None) -> PahoDevice:
    """A connected paho device subscribed to the twin and method filters (registered first unless `files`)."""
    if files is None:
        files = DeviceFiles.write(gw.register_self_signed(device_id), tmp, device_id)
    dev = PahoDevice(gw.port, gw.root, device_id, files)
    assert dev.connect() == 0
    for topic_filter in ("$iothub/twin/res/#", "$iothub/twin/PATCH/properties/desired/#", "$iothub/methods/POST/#"):
        assert dev.subscribe(topic_filter, qos=0) == [0]
    return dev


def next_message(dev: PahoDevice, prefix: str, timeout: float = 15) -> mqtt.MQTTMessage:
    deadline = time.monotonic() + timeout
    while True:
        message = dev.messages.get(timeout=max(0.01, deadline - time.monotonic()))
        if message.topic.startswith(prefix):
            return message


def twin_get(dev: PahoDevice, rid: str) -> dict[str, Any]:
    assert dev.publish(f"$iothub/twin/GET/?$rid={rid}", b"", qos=0)
    answer = next_message(dev, "$iothub/twin/res/")
    assert answer.topic == f"$iothub/twin/res/200/?$rid={rid}"
    return dict(json.loads(answer.payload))


def hub_messages(hub: HubProcess, device_id: str) -> list[dict[str, Any]]:
    return list(hub.admin.messages(device_id)["messages"])


def test_one_devices_twin_answers_and_method_calls_never_reach_another(gateway: GatewayProcess, hub: HubProcess,
                                                                      tmp_path: Path) -> None:
    alice, mallory = device(gateway, tmp_path, "alice"), device(gateway, tmp_path, "mallory")
    try:
        assert alice.publish("$iothub/twin/PATCH/properties/reported/?$rid=r1", b'{"secret": "alice-only"}')
        assert next_message(alice, "$iothub/twin/res/").topic.startswith("$iothub/twin/res/204/?$rid=r1&$version=")
        assert twin_get(alice, "g1")["reported"]["secret"] == "alice-only"
        hub.admin.twins.set_desired("alice", {"color": "blue"})
        assert json.loads(next_message(alice, "$iothub/twin/PATCH/properties/desired/").payload)["color"] == "blue"
        calls: queue.Queue[dict[str, Any]] = queue.Queue()
        caller = threading.Thread(
            target=lambda: calls.put(hub.admin.twins.invoke("alice", "open", {"door": 1}, timeout=10)))
        caller.start()
        request = next_message(alice, "$iothub/methods/POST/open/")
        rid = request.topic.split("$rid=", 1)[1]
        # Mallory answers with alice's request id first: the gateway drops it, alice's answer wins.
        assert mallory.publish(f"$iothub/methods/res/500/?$rid={rid}", b'{"hijacked": true}')
        time.sleep(0.5)
        assert alice.publish(f"$iothub/methods/res/200/?$rid={rid}", b'{"opened": 1}')
        caller.join(20)
        assert calls.get(timeout=1) == {"status": 200, "payload": {"opened": 1}}
        time.sleep(1)  # anything misrouted to mallory would have arrived by now
        leaked = []
        while not mallory.messages.empty():
            leaked.append(mallory.messages.get().topic)
        assert leaked == []
    finally:
        alice.close()
        mallory.close()
    assert hub_messages(hub, "alice") == []
    assert hub_messages(hub, "mallory") == []
    assert "method response from device=mallory" in gateway.log()


def test_reserved_properties_are_refused_and_system_properties_kept(gateway: GatewayProcess, hub: HubProcess,
                                                                    tmp_path: Path) -> None:
    dev = device(gateway, tmp_path, "prop-1")
    try:
        assert dev.publish("devices/prop-1/messages/events/iothub-connection-device-id=victim", b"spoof")
        assert dev.publish("devices/prop-1/messages/events/%24.cdid=victim", b"spoof")
        assert dev.publish("$iothub/twin/DELETE/?$rid=1", b"unknown path")
        assert dev.publish("devices/prop-1/messages/events/%24.mid=m-1&%24.cid=c-1&site=a", b"fine")
    finally:
        dev.close()
    wait_for(lambda: hub_messages(hub, "prop-1"), what="the good message at the hub")
    time.sleep(1)
    (message,) = hub_messages(hub, "prop-1")
    assert base64.b64decode(message["payload_b64"]) == b"fine"
    assert message["properties"] == {"site": "a"}
    assert message["system_properties"] == {"$.mid": "m-1", "$.cid": "c-1"}
    assert message["kind"] == "telemetry"
    assert "reason=reserved_property" in gateway.log()
    assert "reason=unknown_iothub_path" in gateway.log()


def test_desired_state_set_while_away_is_what_the_device_gets_also_from_the_cache(
        gateway: GatewayProcess, hub: HubProcess, tmp_path: Path) -> None:
    dev = device(gateway, tmp_path, "away-1")
    assert dev.files is not None
    files = dev.files
    assert twin_get(dev, "1")["desired"] == {"$version": 1}  # now cached at the gateway
    dev.close()
    hub.admin.twins.set_desired("away-1", {"interval": 30, "mode": "eco"})
    hub.admin.twins.set_desired("away-1", {"mode": None})
    wait_for(lambda: "desired patch v3 for device=away-1 kept in the cache only" in gateway.log(),
             what="the gateway to take the desired patches while the device is away")
    hub.stop()
    dev = device(gateway, tmp_path, "away-1", files)
    try:
        assert twin_get(dev, "2")["desired"] == {"interval": 30, "$version": 3}
    finally:
        dev.close()


def test_a_method_behind_a_gateway_that_is_gone_fails_at_once(gateway: GatewayProcess, hub: HubProcess,
                                                              tmp_path: Path) -> None:
    dev = device(gateway, tmp_path, "gone-1")
    dev.close()
    wait_for(lambda: _invoke_reason(hub, "gone-1") == "device_not_online", what="404 for a disconnected device")
    gateway.kill()
    # Once the hub has seen no long poll for its grace period, it answers 404 without waiting for a timeout.
    wait_for(lambda: _invoke_reason(hub, "gone-1") == "device_not_online", timeout=60, what="404 behind a gone gateway")
    assert "is offline" in _invoke_message(hub, "gone-1")


def _invoke_reason(hub: HubProcess, device_id: str) -> str:
    from hub_mock.adminclient import AdminError

    try:
        hub.admin.twins.invoke(device_id, "ping", timeout=5)
    except AdminError as exc:
        return exc.reason
    return "answered"


def _invoke_message(hub: HubProcess, device_id: str) -> str:
    from hub_mock.adminclient import AdminError

    try:
        hub.admin.twins.invoke(device_id, "ping", timeout=5)
    except AdminError as exc:
        return exc.message
    return "answered"


def test_tempsensor_reports_follows_desired_interval_and_answers_methods(gateway: GatewayProcess, hub: HubProcess,
                                                                         tmp_path: Path) -> None:
    cert = gateway.register_self_signed("TempSensor")
    files = DeviceFiles.write(cert, tmp_path, "TempSensor")
    hub.admin.twins.set_desired("TempSensor", {"interval": 0.5})
    proc = subprocess.Popen(
        [TEMPSENSOR, "--gateway-hostname", HOSTNAME, "--connect-address", "127.0.0.1", "--port", str(gateway.port),
         "--ca-file", str(gateway.root), "--cert", str(files.cert), "--key", str(files.key), "--interval", "1",
         "--json-log"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    events: queue.Queue[dict[str, Any]] = queue.Queue()
    seen: list[dict[str, Any]] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            events.put(json.loads(line))

    threading.Thread(target=read, daemon=True).start()

    def wait_event(kind: str, timeout: float = 20) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            event = events.get(timeout=max(0.01, deadline - time.monotonic()))
            seen.append(event)
            if event["event"] == kind:
                return event

    try:
        assert wait_event("interval")["interval"] == 0.5  # the desired state from its GET at start
        wait_for(lambda: hub.admin.twins.show("TempSensor")["properties"]["reported"].get("interval") == 0.5,
                 what="the interval reported")
        reported = hub.admin.twins.show("TempSensor")["properties"]["reported"]
        assert reported["firmware"] == "1.3.0"
        hub.admin.twins.set_desired("TempSensor", {"interval": 0.2})
        assert wait_event("interval")["interval"] == 0.2
        assert hub.admin.twins.invoke("TempSensor", "blink", {"times": 2}, timeout=10) == {
            "status": 200, "payload": {"blinked": 2}}
        assert hub.admin.twins.invoke("TempSensor", "selfdestruct", None, timeout=10)["status"] == 404
        answer = hub.admin.twins.invoke("TempSensor", "reboot", None, timeout=10)
        assert answer["status"] == 200
        wait_event("connected")  # reconnected after the reboot
    finally:
        proc.terminate()
        proc.wait(20)
    kinds = {m["kind"] for m in hub_messages(hub, "TempSensor")}
    assert kinds == {"telemetry"}
    for message in hub_messages(hub, "TempSensor"):
        assert "seq" in json.loads(base64.b64decode(message["payload_b64"]))


def test_twin_and_method_traffic_never_becomes_telemetry(gateway: GatewayProcess, hub: HubProcess,
                                                         tmp_path: Path) -> None:
    dev = device(gateway, tmp_path, "kinds-1")
    try:
        assert dev.publish("$iothub/twin/GET/?$rid=1", b"")
        assert dev.publish("$iothub/twin/PATCH/properties/reported/?$rid=2", b'{"fw": "1.2.3"}')
        assert dev.publish("$iothub/methods/res/200/?$rid=nobody-asked", b'{"x": 1}')
        assert dev.publish("$iothub/twin/PATCH/properties/desired/?$rid=3", b'{"sneaky": 1}')
        assert dev.publish("devices/kinds-1/messages/events/", b"marker")
    finally:
        dev.close()
    # The forwarder sends in arrival order: once the marker is at the hub, anything before it would be too.
    wait_for(lambda: any(base64.b64decode(m["payload_b64"]) == b"marker" for m in hub_messages(hub, "kinds-1")),
             what="the marker at the hub")
    messages = hub_messages(hub, "kinds-1")
    assert [(m.get("kind"), base64.b64decode(m["payload_b64"])) for m in messages] == [("telemetry", b"marker")]
    assert [p["patch"] for p in hub.admin.twins.reported_patches("kinds-1")] == [{"fw": "1.2.3"}]


def test_hub_mock_cli_twin_and_invoke_verbs(gateway: GatewayProcess, hub: HubProcess, tmp_path: Path) -> None:
    dev = device(gateway, tmp_path, "cli-1")  # subscribed to methods, and never answers
    try:
        set_desired = hub.cli("twin", "set-desired", "cli-1", '{"interval": 5, "mode": "eco"}')
        assert set_desired.returncode == 0, set_desired.stderr
        assert hub.cli("twin", "set-desired", "cli-1", '{"mode": null}').returncode == 0
        shown = hub.cli("twin", "show", "cli-1")
        desired = json.loads(shown.stdout)["properties"]["desired"]
        assert (desired["interval"], desired["$version"]) == (5, 3)
        assert "mode" not in desired
        assert desired["$metadata"]["interval"]["$lastUpdatedVersion"] == 2
        bad = hub.cli("twin", "set-desired", "cli-1", "not json")
        assert bad.returncode == 2
        assert "not JSON" in bad.stderr
        silent = hub.cli("invoke", "cli-1", "reboot", "--payload", '{"delay": 0}', "--timeout", "5")
        assert silent.returncode == 1
        assert "504 gateway_timeout" in silent.stderr
        assert next_message(dev, "$iothub/methods/POST/reboot/").payload == b'{"delay":0}'
        unknown = hub.cli("invoke", "nobody", "reboot")
        assert unknown.returncode == 1
        assert "404 device_not_found" in unknown.stderr
    finally:
        dev.close()


def test_retain_on_telemetry_is_carried_as_mqtt_retain(gateway: GatewayProcess, hub: HubProcess,
                                                       tmp_path: Path) -> None:
    dev = device(gateway, tmp_path, "retain-1")
    try:
        info = dev.client.publish("devices/retain-1/messages/events/", b"kept?", qos=1, retain=True)
        info.wait_for_publish(10)
    finally:
        dev.close()
    wait_for(lambda: hub_messages(hub, "retain-1"), what="the message at the hub")
    (message,) = hub_messages(hub, "retain-1")
    assert message["properties"] == {"mqtt-retain": "true"}

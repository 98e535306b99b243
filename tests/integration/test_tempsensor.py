"""The real `tempsensor` CLI against a real Mosquitto over real TLS, with `mosquitto_sub` as the witness.

Mosquitto presents a server certificate for edgegateway.local chained root → intermediate → Edge CA →
server and requires a client certificate chaining to the root; devices are issued by the intermediate
and send it along, as certGen.sh's do. Mosquitto binds 127.0.0.1: the sensor dials that address
(--connect-address) and still verifies the name edgegateway.local. A third, plain loopback listener
serves the witness and the cloud-to-device publisher, so neither depends on the TLS under test.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from gateway.pki import CA
from tests.chaos.control import ProxyProcess

pytestmark = pytest.mark.integration

TEMPSENSOR = str(Path(sys.executable).with_name("tempsensor"))
HOSTNAME = "edgegateway.local"
EVENTS = "devices/+/messages/events/"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


@dataclass
class Pki:
    dir: Path
    root: Path
    intermediate: CA
    other_root: Path
    stranger_ca: CA

    def device(self, device_id: str, directory: Path | None = None, *, issuer: CA | None = None) -> tuple[Path, Path]:
        """ID.cert.pem (leaf + intermediate) and ID.key.pem (0600) for a device."""
        directory = directory or self.dir / "devices"
        issued = (issuer or self.intermediate).issue_device_cert(device_id)
        cert = issued.fullchain_pem().write_to_path(directory / f"{device_id}.cert.pem")
        key = issued.private_key_pem.write_to_path(directory / f"{device_id}.key.pem", private=True)
        return cert, key


@dataclass
class Broker:
    tls_port: int  # anonymous devices with a certificate chaining to the root are welcome
    refusing_port: int  # same TLS, but allow_anonymous false: CONNACK 5 for everyone
    plain_port: int  # the witness's and the cloud-to-device publisher's door
    proc: subprocess.Popen[bytes]
    log: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    root = CA.create_root("TempSensor Test Root")
    intermediate = root.create_child_ca("Intermediate", path_length=1)
    edge = intermediate.create_child_ca("Edge CA")
    server = edge.issue_server_cert(HOSTNAME)
    server.fullchain_pem().write_to_path(d / "server.pem")
    server.private_key_pem.write_to_path(d / "server.key", private=True)
    return Pki(
        dir=d,
        root=root.cert_pem.write_to_path(d / "root.pem"),
        intermediate=intermediate,
        other_root=CA.create_root("Unrelated Root").cert_pem.write_to_path(d / "other-root.pem"),
        stranger_ca=CA.create_root("Stranger Device CA"),
    )


@pytest.fixture(scope="module")
def broker(pki: Pki) -> Iterator[Broker]:
    ports = free_port(), free_port(), free_port()
    tls = f"cafile {pki.root}\ncertfile {pki.dir / 'server.pem'}\nkeyfile {pki.dir / 'server.key'}\n" \
          "require_certificate true\nuse_identity_as_username false\n"
    conf = pki.dir / "mosquitto.conf"
    conf.write_text(
        "per_listener_settings true\npersistence false\nlog_dest stderr\n"
        # As root, mosquitto drops to user "mosquitto", which cannot read our 0600 key.
        + ("user root\n" if os.geteuid() == 0 else "")
        + f"listener {ports[0]} 127.0.0.1\n{tls}allow_anonymous true\n"
        + f"listener {ports[1]} 127.0.0.1\n{tls}allow_anonymous false\n"
        + f"listener {ports[2]} 127.0.0.1\nallow_anonymous true\n"
    )
    log = pki.dir / "mosquitto.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(["/usr/sbin/mosquitto", "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT)

    def listening() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"mosquitto exited: {log.read_text()}")
        try:
            for port in ports:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return False
        return True

    try:
        wait_until(listening, "mosquitto to listen")
        yield Broker(*ports, proc=proc, log=log)
    finally:
        proc.terminate()
        proc.wait(10)


class Witness:
    """`mosquitto_sub` on the plain listener: what actually reached the broker, as (topic, payload)."""

    def __init__(self, broker: Broker, topic: str) -> None:
        # mosquitto_sub block-buffers a pipe; stdbuf makes it line-buffered. -d announces the SUBACK.
        self.proc = subprocess.Popen(
            ["stdbuf", "-oL", "mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.plain_port), "-t", topic,
             "-q", "1", "-v", "-d"], stdout=subprocess.PIPE, text=True)
        self.messages: list[tuple[str, str]] = []
        self.subscribed = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self.subscribed.wait(10):
            self.close()
            raise AssertionError("mosquitto_sub did not subscribe")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("Subscribed"):
                self.subscribed.set()
            elif match := re.match(r"(devices/\S+) (.*)$", line):
                self.messages.append((match[1], match[2]))

    def seqs(self, device_id: str) -> list[int]:
        topic = f"devices/{device_id}/messages/events/"
        return [json.loads(payload)["seq"] for t, payload in list(self.messages) if t == topic]

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def witness(broker: Broker) -> Iterator[Witness]:
    w = Witness(broker, EVENTS)
    try:
        yield w
    finally:
        w.close()


def sensor_args(pki: Pki, port: int, files: tuple[Path, Path] | None, *extra: str, hostname: str = HOSTNAME,
                ca: Path | None = None, json_log: bool = True) -> list[str]:
    cmd = [TEMPSENSOR, "--gateway-hostname", hostname, "--connect-address", "127.0.0.1", "--port", str(port),
           "--ca-file", str(ca or pki.root), "--interval", "0.05"]
    if files is not None:
        cmd += ["--cert", str(files[0]), "--key", str(files[1])]
    return [*cmd, *(["--json-log"] if json_log else []), *extra]


def run_sensor(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def events_of(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines()]


class Sensor:
    """A `tempsensor` process whose --json-log events are collected as they come."""

    def __init__(self, cmd: list[str]) -> None:
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.events: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.events.append(json.loads(line))

    def of(self, event: str) -> list[dict[str, Any]]:
        return [e for e in list(self.events) if e["event"] == event]

    def wait_for(self, event: str, count: int = 1, timeout: float = 15.0) -> list[dict[str, Any]]:
        wait_until(lambda: len(self.of(event)) >= count or self.proc.poll() is not None, f"{count} {event!r} events",
                   timeout)
        assert len(self.of(event)) >= count, f"exited {self.proc.returncode} after {self.events}"
        return self.of(event)

    def finish(self, timeout: float = 30.0) -> int:
        rc = self.proc.wait(timeout)
        self._reader.join(5)
        return rc

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.finish()


def test_five_readings_arrive_as_json(pki: Pki, broker: Broker, witness: Witness) -> None:
    files = pki.device("TempSensor")
    done = run_sensor(sensor_args(pki, broker.tls_port, files, "--count", "5"))
    assert done.returncode == 0, done.stdout + done.stderr
    events = events_of(done.stdout)
    assert [e["seq"] for e in events if e["event"] == "acked"] == [1, 2, 3, 4, 5]
    assert events[0]["event"] == "connected"
    assert events[0]["message"] == f"connected to {HOSTNAME}:{broker.tls_port} via 127.0.0.1"
    wait_until(lambda: len(witness.seqs("TempSensor")) >= 5, "5 readings at the witness")
    bodies = [json.loads(p) for t, p in witness.messages if t == "devices/TempSensor/messages/events/"]
    assert [b["seq"] for b in bodies] == [1, 2, 3, 4, 5]
    for body in bodies:
        assert set(body) == {"temperature", "humidity", "seq", "ts"}
        assert -10 <= body["temperature"] <= 45
        assert 5 <= body["humidity"] <= 95
        assert datetime.fromisoformat(body["ts"]).utcoffset() is not None
    assert bodies[0]["ts"].endswith("Z")


def test_wrong_hostname_is_explained_in_words(pki: Pki, broker: Broker, witness: Witness) -> None:
    files = pki.device("ts-hostname")
    done = run_sensor(sensor_args(pki, broker.tls_port, files, "--count", "1", hostname="other.local",
                                  json_log=False))
    assert done.returncode == 3, done.stdout + done.stderr
    assert f"the gateway's certificate is for {HOSTNAME}, you dialled other.local" in done.stdout
    assert "giving up: retrying will not fix this" in done.stdout
    assert witness.seqs("ts-hostname") == []


def test_unrelated_root_in_ca_file_is_explained(pki: Pki, broker: Broker) -> None:
    files = pki.device("ts-root")
    done = run_sensor(sensor_args(pki, broker.tls_port, files, "--count", "1", ca=pki.other_root))
    assert done.returncode == 3, done.stdout + done.stderr
    failed = [e for e in events_of(done.stdout) if e["event"] == "connect_failed"]
    assert failed[0]["reason"] == "untrusted_chain"
    assert failed[0]["message"] == (
        "cannot connect: the gateway's chain does not lead to a root in ca-file (gateway sent: "
        f"CN={HOSTNAME} ← CN=Edge CA ← CN=Intermediate; the chain needs CN=TempSensor Test Root, which neither the "
        "gateway nor ca-file supplies; ca-file holds: CN=Unrelated Root)")


def test_device_certificate_from_an_unknown_ca_is_explained(pki: Pki, broker: Broker) -> None:
    files = pki.device("ts-stranger", issuer=pki.stranger_ca)
    done = run_sensor(sensor_args(pki, broker.tls_port, files, "--count", "1"))
    assert done.returncode == 3, done.stdout + done.stderr
    # At the first attempt: the alert must not be lost to the TCP reset that paho's CONNECT provokes.
    events = events_of(done.stdout)
    assert [(e["event"], e["reason"]) for e in events] == [("connect_failed", "device_cert_rejected"),
                                                           ("gave_up", "device_cert_rejected")]
    assert "the gateway does not trust the CA that issued this device's certificate" in events[0]["message"]


def test_connack_5_is_fatal_unless_retrying_forever(pki: Pki, broker: Broker) -> None:
    files = pki.device("ts-refused")
    done = run_sensor(sensor_args(pki, broker.refusing_port, files, "--count", "1"))
    assert done.returncode == 3, done.stdout + done.stderr
    refused = [e for e in events_of(done.stdout) if e["event"] == "refused"]
    assert [e["reason"] for e in refused] == ["not_authorized"]
    assert refused[0]["message"].startswith(
        "the gateway refused the connection: not authorized: the gateway does not recognise this device's certificate")

    stubborn = Sensor(sensor_args(pki, broker.refusing_port, files, "--count", "1", "--retry-forever"))
    try:
        stubborn.wait_for("refused", 2)
        assert stubborn.of("retry")
    finally:
        assert stubborn.stop() == 4  # stopped before its one reading was acknowledged


def test_refused_connections_are_retried_with_backoff_until_the_gateway_is_back(
        pki: Pki, broker: Broker, witness: Witness, tmp_path: Path) -> None:
    proxy = ProxyProcess(("127.0.0.1", broker.tls_port), tmp_path)
    try:
        proxy.command("refuse")
        sensor = Sensor(sensor_args(pki, proxy.port, pki.device("ts-backoff"), "--count", "3"))
        failed = sensor.wait_for("connect_failed", 2)
        assert {e["reason"] for e in failed} == {"connection_refused"}
        assert failed[0]["message"] == ("cannot connect: connection refused: nothing listens on "
                                        f"127.0.0.1:{proxy.port} (is the gateway running? is the port right?)")
        retries = sensor.wait_for("retry", 2)
        assert [r["failures"] for r in retries[:2]] == [1, 2]
        assert 0 <= retries[0]["wait"] <= 1.0
        assert 0 <= retries[1]["wait"] <= 2.0
        proxy.command("pass")
        assert sensor.finish() == 0
    finally:
        proxy.stop()
    assert [e["seq"] for e in sensor.of("acked")] == [1, 2, 3]
    wait_until(lambda: witness.seqs("ts-backoff") == [1, 2, 3], "readings 1-3 at the witness")


def test_every_acknowledged_reading_arrives_across_cut_connections(
        pki: Pki, broker: Broker, witness: Witness, tmp_path: Path) -> None:
    proxy = ProxyProcess(("127.0.0.1", broker.tls_port), tmp_path)
    try:
        sensor = Sensor(sensor_args(pki, proxy.port, pki.device("ts-cut"), "--count", "40"))
        wait_until(lambda: len(sensor.of("acked")) >= 10, "10 acknowledged readings")
        # Slow the PUBACKs down until the broker holds a reading whose PUBACK the sensor has not seen, then
        # cut: that reading is in flight and must be republished on the next connection.
        proxy.command("latency 300")
        wait_until(lambda: max(witness.seqs("ts-cut"), default=0) > max(e["seq"] for e in sensor.of("acked")),
                   "a reading at the broker and not yet acknowledged")
        proxy.command("cut")
        proxy.command("latency 0")
        assert sensor.wait_for("connected", 2)[1]["pending"] > 0
        wait_until(lambda: len(sensor.of("acked")) >= 25, "25 acknowledged readings")
        proxy.command("cut")
        sensor.wait_for("connected", 3)
        assert sensor.finish() == 0, sensor.events
    finally:
        proxy.stop()
    acked = [e["seq"] for e in sensor.of("acked")]
    assert acked == list(range(1, 41))
    assert [e["reason"] for e in sensor.of("disconnected")] == ["connection_lost", "connection_lost"]
    assert len(sensor.of("retry")) >= 2
    # QoS 1 is at-least-once: a reading republished after a cut may reach the broker twice.
    wait_until(lambda: set(acked) <= set(witness.seqs("ts-cut")), "every acknowledged reading at the witness")


def test_a_fleet_of_five_publishes(pki: Pki, broker: Broker, witness: Witness) -> None:
    fleet = pki.dir / "fleet"
    for i in range(6):
        pki.device(f"fleet-{i}", fleet)
    done = run_sensor(sensor_args(pki, broker.tls_port, None, "--fleet", "5", "--fleet-dir", str(fleet),
                                  "--count", "3"))
    assert done.returncode == 0, done.stdout + done.stderr
    events = events_of(done.stdout)
    members = [f"fleet-{i}" for i in range(5)]
    assert sorted(e["device"] for e in events if e["event"] == "connected") == members
    for device_id in members:
        assert [e["seq"] for e in events if e["event"] == "acked" and e["device"] == device_id] == [1, 2, 3]
    wait_until(lambda: all(witness.seqs(d) == [1, 2, 3] for d in members), "3 readings from each of 5 sensors")
    assert witness.seqs("fleet-5") == []  # the sixth pair is not among the first five


def test_cloud_to_device_messages_are_printed(pki: Pki, broker: Broker) -> None:
    sensor = Sensor(sensor_args(pki, broker.tls_port, pki.device("ts-c2d"), "--interval", "0.2"))
    try:
        sensor.wait_for("subscribed")
        for device_id, body in (("someone-else", "not for you"), ("ts-c2d", "calibrate")):
            subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.plain_port), "-q", "1",
                            "-t", f"devices/{device_id}/messages/devicebound/x", "-m", body], check=True, timeout=10)
        c2d = sensor.wait_for("c2d")
    finally:
        assert sensor.stop() == 0  # no --count: stopping is the normal end
    assert [(e["topic"], e["payload"]) for e in c2d] == [("devices/ts-c2d/messages/devicebound/x", "calibrate")]
    assert c2d[0]["message"] == "cloud-to-device message on devices/ts-c2d/messages/devicebound/x: calibrate"

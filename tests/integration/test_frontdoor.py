"""The front door with real TLS and real clients: paho, raw sockets, openssl s_client, mosquitto_pub/sub."""

from __future__ import annotations

import array
import asyncio
import fcntl
import shutil
import socket
import ssl
import subprocess
import termios
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.frontdoor import turns as read_turns
from gateway.frontdoor.server import FrontDoorLimits
from gateway.mqtt import codec
from gateway.pki import IssuedCert, self_signed_device_cert
from gateway.service import memory_guard
from gateway.service.budget import MEMORY_PER_CONNECTION, MEMORY_PER_OPENSSL_CONNECTION
from gateway.service.memory_guard import MIB, MemoryGuard, Pressure
from tests import certmatrix
from tests.clients import DeviceFiles, PahoDevice
from tests.frontdoor_harness import HOSTNAME, DictDirectory, FrontDoorThread

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC)
MATRIX = certmatrix.build(NOW)
A = self_signed_device_cert("sensor-a", now=NOW)
B = self_signed_device_cert("sensor-b", now=NOW)
# No device here may lose its connection to the handshake deadline on a loaded machine (the gateway runs in
# this process, beside the clients), nor have a connection the test expects closed for another reason
# closed by it: 60 s. The deadline itself is tested on a gateway of its own, `quick`.
LIMITS = FrontDoorLimits(max_connections=20, max_packet_size=4096, handshake_timeout=60.0)
# Longer than a TLS handshake takes on a loaded machine, which test_connect_never_sent_... must finish first.
QUICK_HANDSHAKE = 5.0


def unread_bytes(conn: object) -> int:
    """Bytes waiting in a gateway connection's socket, not yet read (FIONREAD)."""
    sock = conn.transport.get_extra_info("socket")  # type: ignore[attr-defined]
    count = array.array("i", [0])
    fcntl.ioctl(sock.fileno(), termios.FIONREAD, count)
    return count[0]


def wait_for(cond: Callable[[], object], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FrontDoorThread]:
    records = [certmatrix.ss_record("sensor-a", A.thumbprint_sha256),
               certmatrix.ss_record("sensor-b", B.thumbprint_sha256)]
    directory = DictDirectory(certmatrix.GATEWAY_ID, MATRIX.anchors, records)
    with FrontDoorThread(tmp_path_factory.mktemp("gw"), directory, limits=LIMITS) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FrontDoorThread]:
    directory = DictDirectory(certmatrix.GATEWAY_ID, MATRIX.anchors, [])
    limits = FrontDoorLimits(max_connections=20, max_packet_size=4096, handshake_timeout=QUICK_HANDSHAKE)
    with FrontDoorThread(tmp_path_factory.mktemp("quick"), directory, limits=limits) as gateway:
        yield gateway


@pytest.fixture
def files(tmp_path: Path) -> Callable[[IssuedCert, str], DeviceFiles]:
    return lambda issued, name: DeviceFiles.write(issued, tmp_path, name)


def device(gw: FrontDoorThread, files: DeviceFiles | None, client_id: str, **kw: object) -> PahoDevice:
    return PahoDevice(gw.port, gw.pki.root_path, client_id, files, **kw)  # type: ignore[arg-type]


def tls_socket(gw: FrontDoorThread, files: DeviceFiles | None) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(gw.pki.root_path))
    ctx.check_hostname = False
    if files:
        ctx.load_cert_chain(str(files.cert), str(files.key))
    raw = socket.create_connection(("127.0.0.1", gw.port), timeout=30)
    return ctx.wrap_socket(raw, server_hostname=HOSTNAME)


def read_until_closed(sock: socket.socket, timeout: float, start: float | None = None) -> tuple[bytes, float]:
    """Everything the gateway sends until it closes; and how long that took (since `start`, when given:
    read before the connection or the packet that starts the gateway's timer, it makes a lower bound)."""
    start = time.monotonic() if start is None else start
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except (ConnectionResetError, ssl.SSLError):
        pass
    return data, time.monotonic() - start


def broker_session_state(gw: FrontDoorThread, device_id: str) -> str | None:
    """The device's session state at the broker, as delivery reads it ("connected": sent; else queued)."""
    def read() -> str | None:
        entry = gw.broker.broker._sessions.get(device_id)
        return None if entry is None else str(entry[0].transitions.state)
    return gw.call(read)


def c2d(gw: FrontDoorThread, device_id: str, payload: bytes, qos: int = 1) -> None:
    topic = f"devices/{device_id}/messages/devicebound/note"
    asyncio.run_coroutine_threadsafe(gw.broker.deliver(topic, payload, qos), gw.loop).result(30)


# ---- the trust picture, witnessed by openssl -----------------------------------------------------


def s_client(gw: FrontDoorThread, verify_hostname: str, files: DeviceFiles) -> str:
    cmd = ["openssl", "s_client", "-connect", f"127.0.0.1:{gw.port}", "-servername", HOSTNAME,
           "-verify_hostname", verify_hostname, "-CAfile", str(gw.pki.root_path),
           "-cert", str(files.cert), "-key", str(files.key), "-showcerts"]
    done = subprocess.run(cmd, input=b"", capture_output=True, timeout=20)
    return done.stdout.decode() + done.stderr.decode()  # depth lines go to stderr


def test_openssl_sees_the_seed_chain_and_verifies_the_hostname(gw: FrontDoorThread, files: Callable) -> None:
    out = s_client(gw, HOSTNAME, files(A, "a"))
    assert "depth=3 CN = Gateway Private Root" in out
    assert "depth=2 CN = Gateway Intermediate" in out
    assert "depth=1 CN = Edge CA" in out
    assert f"depth=0 CN = {HOSTNAME}" in out
    assert "Verify return code: 0 (ok)" in out


def test_openssl_with_another_hostname_fails_verification(gw: FrontDoorThread, files: Callable) -> None:
    out = s_client(gw, "other.local", files(A, "a"))
    assert "Verify return code: 62 (hostname mismatch)" in out


# ---- what never reaches the broker ---------------------------------------------------------------


def test_garbage_instead_of_tls_is_closed_and_counted(gw: FrontDoorThread) -> None:
    before = gw.door.counters.get("edgegate_tls_failures_total", stage="handshake")  # type: ignore[union-attr]
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 3)
        read_until_closed(sock, 30)
    # Closed as a TLS failure (counted as one), not by the handshake deadline.
    wait_for(lambda: gw.door.counters.get("edgegate_tls_failures_total", stage="handshake") == before + 1)  # type: ignore[union-attr]


def test_tls_then_garbage_instead_of_connect_is_closed_at_once(gw: FrontDoorThread, files: Callable) -> None:
    # The garbage announces a 127-byte packet, but its first byte is no CONNECT's: the gateway closes at
    # once, as a protocol violation, not at this gateway's 60 s handshake deadline.
    assert gw.door is not None
    door = gw.door
    before = gw.call(lambda: door.counters.get("edgegate_protocol_violations_total", reason="connect_expected"))
    with tls_socket(gw, files(A, "a")) as sock:
        sock.sendall(b"\x00\xff" * 50)
        data, _ = read_until_closed(sock, 30)  # raises if the gateway keeps it open (its deadline is 60 s)
    assert data == b""
    assert gw.call(lambda: door.counters.get("edgegate_protocol_violations_total",
                                             reason="connect_expected")) == before + 1


def test_silent_tcp_connection_is_closed_at_the_handshake_timeout(quick: FrontDoorThread) -> None:
    start = time.monotonic()  # before the connection: the gateway's deadline starts at its accept, after this
    with socket.create_connection(("127.0.0.1", quick.port), timeout=30) as sock:
        _, took = read_until_closed(sock, 30, start)
    # Closed by the gateway (a read still open after 30 s raises), and never before the timeout.
    assert took > QUICK_HANDSHAKE - 0.1


def test_connect_never_sent_is_closed_at_the_timeout(quick: FrontDoorThread, files: Callable) -> None:
    start = time.monotonic()
    with tls_socket(quick, files(A, "a")) as sock:
        _, took = read_until_closed(sock, 30, start)
    # Closed by the gateway (a read still open after 30 s raises), and never before the timeout.
    assert took > QUICK_HANDSHAKE - 0.1


def test_unsupported_protocol_gets_connack_1(gw: FrontDoorThread, files: Callable) -> None:
    mqtt5 = b"\x10\x10\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x00\x03abc"
    with tls_socket(gw, files(A, "a")) as sock:
        sock.sendall(mqtt5)
        data, _ = read_until_closed(sock, 30)
    assert data == codec.encode_connack(1)


# ---- per-packet rules ----------------------------------------------------------------------------


def test_publish_own_telemetry_delivered_other_device_dropped(gw: FrontDoorThread, files: Callable) -> None:
    dev = device(gw, files(A, "a"), "sensor-a")
    assert dev.connect() == 0
    try:
        assert dev.publish("devices/sensor-a/messages/events/unit=C", b"21.5")
        assert dev.publish("devices/sensor-b/messages/events/", b"forged")  # acked (3.1.1), not delivered
        assert dev.publish("devices/sensor-a/messages/events/", b"after")
    finally:
        dev.close()
    mine = [m for m in gw.sink.messages if m.device_id == "sensor-a"]
    assert [m.payload for m in mine][-2:] == [b"21.5", b"after"]
    assert mine[-2].properties == (("unit", "C"),)
    assert all(m.payload != b"forged" for m in gw.sink.messages)
    assert gw.door.counters.get("edgegate_publish_denied_total", reason="other_device") >= 1  # type: ignore[union-attr]


def test_subscribe_outside_own_topics_gets_0x80(gw: FrontDoorThread, files: Callable) -> None:
    dev = device(gw, files(A, "a"), "sensor-a")
    assert dev.connect() == 0
    try:
        assert dev.subscribe("#") == [0x80]
        assert dev.subscribe("devices/sensor-b/messages/devicebound/#") == [0x80]
        assert dev.subscribe("devices/sensor-a/messages/devicebound/#", qos=1) == [1]
        dev.client.subscribe([("devices/sensor-b/messages/devicebound/#", 1),
                              ("devices/sensor-a/messages/devicebound/#", 2)])
        assert dev.subacks.get(timeout=30) == [0x80, 1]  # QoS 2 requested, 1 granted
        c2d(gw, "sensor-b", b"not for a")
        c2d(gw, "sensor-a", b"for a")
        msg = dev.messages.get(timeout=30)
        assert (msg.topic, msg.payload) == ("devices/sensor-a/messages/devicebound/note", b"for a")
        assert dev.messages.empty()
    finally:
        dev.close()


def test_qos2_publish_disconnects(gw: FrontDoorThread, files: Callable) -> None:
    dev = device(gw, files(A, "a"), "sensor-a")
    assert dev.connect() == 0
    try:
        dev.client.publish("devices/sensor-a/messages/events/", b"x", qos=2)
        assert dev.disconnected.wait(30)
    finally:
        dev.close()


def test_oversized_packet_disconnects(gw: FrontDoorThread, files: Callable) -> None:
    dev = device(gw, files(A, "a"), "sensor-a")
    assert dev.connect() == 0
    try:
        dev.client.publish("devices/sensor-a/messages/events/", b"x" * 5000, qos=0)
        assert dev.disconnected.wait(30)
    finally:
        dev.close()
    assert gw.door.counters.get("edgegate_protocol_violations_total", reason="packet_too_large") >= 1  # type: ignore[union-attr]


def test_failed_outbox_commit_sends_no_puback(gw: FrontDoorThread, files: Callable) -> None:
    dev = device(gw, files(A, "a"), "sensor-a")
    assert dev.connect() == 0
    gw.sink.fail = True
    try:
        info = dev.client.publish("devices/sensor-a/messages/events/", b"x", qos=1)
        assert dev.disconnected.wait(30)
        assert not info.is_published()
    finally:
        gw.sink.fail = False
        dev.close()


def test_a_hold_stops_reading_admitted_devices_and_the_release_reads_what_waited(gw: FrontDoorThread,
                                                                               files: Callable) -> None:
    # The forward pacer's lever (gateway.upstream.pacing): held, a device's PUBLISH waits in the socket,
    # unread and unacknowledged; a device admitted during the hold is held too; released, both are read.
    a = device(gw, files(A, "a"), "sensor-a")
    assert a.connect() == 0
    b = device(gw, files(B, "b"), "sensor-b")
    try:
        assert gw.door is not None
        # (at least: a device of an earlier test may not have been released yet)
        assert gw.call(lambda: gw.door.hold_reading(True)) >= 1  # type: ignore[union-attr]
        assert b.connect() == 0  # the handshake and CONNECT are not held
        sent = len(gw.sink.messages)
        held_a = a.client.publish("devices/sensor-a/messages/events/", b"held-a", qos=1)
        held_b = b.client.publish("devices/sensor-b/messages/events/", b"held-b", qos=1)
        time.sleep(0.5)
        assert not held_a.is_published()
        assert not held_b.is_published()
        assert len(gw.sink.messages) == sent
        assert gw.call(lambda: gw.door.hold_reading(False)) >= 2  # type: ignore[union-attr]
        held_a.wait_for_publish(30)
        held_b.wait_for_publish(30)
        assert {m.payload for m in gw.sink.messages[sent:]} == {b"held-a", b"held-b"}
    finally:
        a.close()
        b.close()


def test_memory_pressure_refuses_new_devices_then_holds_reads_and_loses_nothing(gw: FrontDoorThread,
                                                                              files: Callable) -> None:
    # gateway.service.memory_guard driving a real front door, as gateway.runtime wires it, with the
    # measurement in the test's hands (bench.fleet_bench --pad makes the pressure itself real). Refusing, a
    # new TLS connection is closed at accept while the connected device is still served; holding, the
    # connected device's PUBLISH waits unread, and the forward pacer letting go of its own hold does not
    # release it; once memory falls, what waited is read and acknowledged, and new devices are admitted.
    door = gw.door
    assert door is not None
    used = [50 * MIB]

    async def no_trim() -> None:
        return None

    guard = MemoryGuard(limit=lambda: 100 * MIB, used=lambda: used[0], trim=no_trim,
                        refuse=door.short_of_memory, shed=door.shed, cap=door.cap,
                        connected=lambda: len(door.online),
                        hold=lambda hold: door.hold_reading(hold, "memory"))

    clock = [0.0]

    def measure(mib: int, later: float = 1.0) -> Pressure:
        """One measurement, a (fake) second after the last: a release needs a second below its mark."""
        used[0] = mib * MIB
        clock[0] += later
        gw.call(guard.step, clock[0])
        return guard.state

    a = device(gw, files(A, "a"), "sensor-a")
    b = device(gw, files(B, "b"), "sensor-b")
    refused = door.counters.get("edgegate_connections_refused_total", reason="memory_pressure")
    try:
        assert a.connect() == 0
        assert measure(91) is Pressure.REFUSING
        with pytest.raises((OSError, ssl.SSLError)):
            tls_socket(gw, files(B, "b")).close()
        assert gw.call(lambda: door.counters.get("edgegate_connections_refused_total",
                                                 reason="memory_pressure")) == refused + 1
        assert a.publish("devices/sensor-a/messages/events/", b"still served")

        assert measure(95) is Pressure.HOLDING
        sent = len(gw.sink.messages)
        held = a.client.publish("devices/sensor-a/messages/events/", b"held", qos=1)
        gw.call(lambda: door.hold_reading(True, "pacer"))
        gw.call(lambda: door.hold_reading(False, "pacer"))  # the pacer lets go; memory still holds
        assert measure(92) is Pressure.HOLDING
        time.sleep(0.5)
        assert not held.is_published()
        assert len(gw.sink.messages) == sent

        assert measure(80) is Pressure.HOLDING  # below the marks for the first time: not yet
        assert measure(80) is Pressure.CLEAR
        held.wait_for_publish(30)
        assert held.is_published()
        assert [m.payload for m in gw.sink.messages[sent:]] == [b"held"]
        assert b.connect() == 0

        # A hold that memory does not end sheds the most recently connected device, and what is left is the
        # ceiling: with memory clear again, b is refused at accept all the same.
        assert measure(95) is Pressure.HOLDING
        while guard.shed_total == 0:
            assert measure(95) is Pressure.HOLDING
        assert b.disconnected.wait(30)
        b.close()  # paho would dial again by itself
        assert not a.disconnected.is_set()
        assert guard.ceiling == 1
        assert measure(80) is Pressure.HOLDING
        assert measure(80) is Pressure.CLEAR
        assert a.publish("devices/sensor-a/messages/events/", b"after the shed")
        refused = gw.call(lambda: door.counters.get("edgegate_connections_refused_total", reason="memory_pressure"))
        with pytest.raises((OSError, ssl.SSLError)):
            tls_socket(gw, files(B, "b")).close()
        assert gw.call(lambda: door.counters.get("edgegate_connections_refused_total",
                                                 reason="memory_pressure")) > refused
        # A minute full with memory clear raises it, and b is admitted.
        assert measure(80, later=memory_guard.RAISE_AFTER) is Pressure.CLEAR
        assert guard.ceiling == 2
        b = device(gw, files(B, "b"), "sensor-b")
        assert b.connect() == 0
        assert b.publish("devices/sensor-b/messages/events/", b"under the raised ceiling")
    finally:
        gw.call(lambda: door.short_of_memory(False))
        gw.call(lambda: door.hold_reading(False, "memory"))
        gw.call(lambda: door.cap(None))
        a.close()
        b.close()


def test_reads_past_the_turn_budget_wait_in_line_and_lose_nothing(gw: FrontDoorThread, files: Callable) -> None:
    # gateway.frontdoor.turns with no budget at all: every read but the first of a loop turn waits in the
    # queue, set aside and unread. QoS 1 publishes of two devices still all go through, each device's in
    # its order. The loop is held while both send, so that both devices' bytes are ready in the same turn
    # however fast or slow this machine is (on a quick one, unheld, every read had a turn to itself).
    assert gw.door is not None
    turns = gw.door.wiring.turns
    gw.call(lambda: setattr(turns, "budget", 0.0))
    a = device(gw, files(A, "a"), "sensor-a")
    b = device(gw, files(B, "b"), "sensor-b")
    held = threading.Event()
    try:
        assert a.connect() == 0
        assert b.connect() == 0
        deferred = gw.call(lambda: turns.deferred)
        sent = len(gw.sink.messages)
        blocked = threading.Event()

        def block() -> None:  # the gateway's loop waits here until released
            blocked.set()
            held.wait(60)

        gw.loop.call_soon_threadsafe(block)
        assert blocked.wait(30)
        infos = []
        for i in range(30):
            infos.append(a.client.publish("devices/sensor-a/messages/events/", b"a%d" % i, qos=1))
            infos.append(b.client.publish("devices/sensor-b/messages/events/", b"b%d" % i, qos=1))
        # paho's threads write them; the gateway cannot read yet. Wait until both devices' bytes sit in the
        # gateway's sockets (the loop is blocked, so its connections can be looked at from here).
        online = [gw.door.online["sensor-a"], gw.door.online["sensor-b"]]
        wait_for(lambda: all(unread_bytes(conn) > 0 for conn in online), what="both devices' bytes at the gateway")
        held.set()
        for info in infos:
            info.wait_for_publish(30)
        got = [m.payload for m in gw.sink.messages[sent:]]
        assert [p for p in got if p.startswith(b"a")] == [b"a%d" % i for i in range(30)]
        assert [p for p in got if p.startswith(b"b")] == [b"b%d" % i for i in range(30)]
        assert gw.call(lambda: turns.deferred) > deferred  # the queue was used, not bypassed
    finally:
        held.set()
        gw.call(lambda: setattr(turns, "budget", read_turns.BUDGET))
        a.close()
        b.close()


# ---- sessions ------------------------------------------------------------------------------------


def test_keepalive_is_enforced_and_the_will_is_published(gw: FrontDoorThread, files: Callable) -> None:
    will_topic = b"devices/sensor-a/messages/events"
    body = (b"\x00\x04MQTT\x04" + bytes([0x02 | 0x04 | 0x08]) + (1).to_bytes(2, "big")  # clean, will QoS 1
            + b"\x00\x08sensor-a" + len(will_topic).to_bytes(2, "big") + will_topic + b"\x00\x04gone")
    connect = b"\x10" + bytes([len(body)]) + body
    with tls_socket(gw, files(A, "a")) as sock:
        start = time.monotonic()  # before the CONNECT that starts the keep-alive clock
        sock.sendall(connect)
        data, took = read_until_closed(sock, 30, start)
    assert data.startswith(codec.encode_connack(0))
    # Closed by the gateway (a read still open after 30 s raises), never before 1.5 x keep-alive of 1 s.
    assert took > 1.3
    wait_for(lambda: any(m.payload == b"gone" for m in gw.sink.messages), what="will message")


def test_second_authenticated_connection_takes_over(gw: FrontDoorThread, files: Callable) -> None:
    first = device(gw, files(A, "a"), "sensor-a")
    second = device(gw, files(A, "a2"), "sensor-a")
    assert first.connect() == 0
    try:
        assert second.connect() == 0
        assert first.disconnected.wait(30)
        assert second.publish("devices/sensor-a/messages/events/", b"from second")
    finally:
        first.client.loop_stop()
        second.close()


def test_unauthenticated_connect_leaves_the_live_session_alone(gw: FrontDoorThread, files: Callable) -> None:
    owner = device(gw, files(A, "a"), "sensor-a")
    assert owner.connect() == 0
    try:
        assert owner.subscribe("devices/sensor-a/messages/devicebound/#") == [1]
        for attacker_files in (None, files(B, "b")):
            attacker = device(gw, attacker_files, "sensor-a")  # clean_session=1, same client id
            assert attacker.connect() == 5
            attacker.close()
        assert not owner.disconnected.is_set()
        c2d(gw, "sensor-a", b"still yours")
        assert owner.messages.get(timeout=30).payload == b"still yours"
    finally:
        owner.close()


def test_persistent_session_cannot_be_resumed_with_another_devices_cert(gw: FrontDoorThread,
                                                                       files: Callable) -> None:
    owner = device(gw, files(A, "a"), "sensor-a", clean_session=False)
    assert owner.connect() == 0
    assert owner.subscribe("devices/sensor-a/messages/devicebound/#") == [1]
    owner.close()
    # The broker ends the session after the front door lets the device go: a message sent before that
    # would go to the closed connection, not the queue (a fixed sleep can be too short on a loaded machine).
    wait_for(lambda: broker_session_state(gw, "sensor-a") == "disconnected", what="the session parked")
    c2d(gw, "sensor-a", b"queued while away")
    thief = device(gw, files(B, "b"), "sensor-a", clean_session=False)
    assert thief.connect() == 5
    thief.close()
    assert thief.messages.empty()
    back = device(gw, files(A, "a"), "sensor-a", clean_session=False)
    assert back.connect() == 0
    try:
        assert back.messages.get(timeout=30).payload == b"queued while away"
    finally:
        back.close()


def test_max_connections(tmp_path: Path, files: Callable) -> None:
    directory = DictDirectory(certmatrix.GATEWAY_ID, MATRIX.anchors, [])
    with FrontDoorThread(tmp_path / "gw", directory, limits=FrontDoorLimits(max_connections=2)) as small:
        held = [socket.create_connection(("127.0.0.1", small.port)) for _ in range(2)]
        wait_for(lambda: len(small.door.connections) == 2)  # type: ignore[union-attr]
        with socket.create_connection(("127.0.0.1", small.port), timeout=5) as extra:
            data, _ = read_until_closed(extra, 30)
        assert data == b""
        assert small.door.counters.get("edgegate_connections_refused_total", reason="max_connections") == 1  # type: ignore[union-attr]
        for sock in held:
            sock.close()


@pytest.mark.parametrize(("version", "fit"), [(ssl.TLSVersion.TLSv1_3, 5), (ssl.TLSVersion.TLSv1_2, 3)])
def test_the_memory_budget_charges_what_each_connection_keeps(tmp_path: Path, version: ssl.TLSVersion,
                                                              fit: int) -> None:
    """Room for three connections as OpenSSL holds them: five TLS 1.3 devices fit once their handshakes
    have left OpenSSL (gateway.tls.record13), three TLS 1.2 ones, which OpenSSL keeps; the next is refused."""
    directory = DictDirectory(certmatrix.GATEWAY_ID, MATRIX.anchors, [])
    limits = FrontDoorLimits(connection_memory=3 * MEMORY_PER_OPENSSL_CONNECTION + 10)
    with FrontDoorThread(tmp_path / "gw", directory, limits=limits) as small:
        door = small.door
        assert door is not None
        ctx = ssl.create_default_context(cafile=str(small.pki.root_path))
        ctx.check_hostname = False
        ctx.maximum_version = version
        held = []
        for n in range(1, fit + 1):
            held.append(ctx.wrap_socket(socket.create_connection(("127.0.0.1", small.port), timeout=30)))
            settled = MEMORY_PER_CONNECTION if version is ssl.TLSVersion.TLSv1_3 else MEMORY_PER_OPENSSL_CONNECTION
            wait_for(lambda n=n, settled=settled: door.charged == n * settled, what=f"{n} connections charged")
        with pytest.raises((OSError, ssl.SSLError)):
            ctx.wrap_socket(socket.create_connection(("127.0.0.1", small.port), timeout=30)).recv(1)
        assert door.counters.get("edgegate_connections_refused_total", reason="memory") == 1
        for sock in held:
            sock.close()
        wait_for(lambda: door.charged == 0, what="every charge given back")


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_both_tls_versions_carry_a_session_both_ways(gw: FrontDoorThread, files: Callable,
                                                      version: ssl.TLSVersion) -> None:
    """TLS 1.2 stays with OpenSSL, TLS 1.3 leaves it for gateway.tls.record13: a paho device publishes,
    subscribes and receives a cloud-to-device message over either."""
    dev = device(gw, files(A, "a"), "sensor-a", max_tls=version)
    assert dev.connect() == 0
    try:
        conn = gw.door.online["sensor-a"]  # type: ignore[union-attr]
        assert conn.tls is not None
        assert conn.tls.protocol_version == version.name.replace("_", ".")
        assert (conn.tls.records is not None) == (version is ssl.TLSVersion.TLSv1_3)
        payload = f"over {version.name}".encode()
        assert dev.publish("devices/sensor-a/messages/events/", payload)
        wait_for(lambda: any(m.payload == payload for m in gw.sink.messages))
        assert dev.subscribe("devices/sensor-a/messages/devicebound/#") == [1]
        c2d(gw, "sensor-a", payload + b" back")
        assert dev.messages.get(timeout=30).payload == payload + b" back"
    finally:
        dev.close()


def test_server_cert_hot_swap_keeps_sessions(gw: FrontDoorThread, files: Callable, tmp_path: Path) -> None:
    dev = device(gw, files(A, "a"), "sensor-a")
    assert dev.connect() == 0
    try:
        renewed = gw.pki.edge_ca.issue_server_cert(HOSTNAME)
        chain = renewed.fullchain_pem().write_to_path(tmp_path / "renewed.pem")
        key = renewed.private_key_pem.write_to_path(tmp_path / "renewed.key", private=True)
        gw.call(gw.contexts.reload, chain, key)
        with tls_socket(gw, files(B, "b")) as sock:
            presented = sock.getpeercert(binary_form=True)
        from cryptography import x509
        assert x509.load_der_x509_certificate(presented).serial_number == renewed.cert.serial_number
        assert not dev.disconnected.is_set()
        assert dev.publish("devices/sensor-a/messages/events/", b"still here")
    finally:
        dev.close()


# ---- outside witnesses ---------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("mosquitto_pub") is None, reason="mosquitto-clients not installed")
def test_mosquitto_pub_and_sub_as_witnesses(gw: FrontDoorThread, files: Callable) -> None:
    f = files(B, "b")
    common = ["-h", "127.0.0.1", "-p", str(gw.port), "--cafile", str(gw.pki.root_path), "--cert", str(f.cert),
              "--key", str(f.key), "--insecure", "-i", "sensor-b", "-q", "1"]
    subprocess.run(["mosquitto_pub", *common, "-t", "devices/sensor-b/messages/events/", "-m", "from mosquitto"],
                   check=True, timeout=60)
    wait_for(lambda: any(m.payload == b"from mosquitto" for m in gw.sink.messages))
    sub = subprocess.Popen(["mosquitto_sub", *common, "-t", "devices/sensor-b/messages/devicebound/#", "-C", "1",
                            "-W", "60"], stdout=subprocess.PIPE)
    # The SUBSCRIBE follows the CONNACK: wait until the broker holds it, or the message finds no subscriber.
    wait_for(lambda: gw.call(lambda: gw.broker.broker.filters_of("sensor-b"))
             == ("devices/sensor-b/messages/devicebound/#",), what="mosquitto_sub's subscription")
    c2d(gw, "sensor-b", b"hello sub")
    out, _ = sub.communicate(timeout=60)
    assert out.strip() == b"hello sub"
    denied = subprocess.run(["mosquitto_sub", *common, "-t", "#", "-C", "1", "-W", "60"], capture_output=True,
                            timeout=90)
    assert b"All subscription requests were denied" in denied.stderr

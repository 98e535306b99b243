"""One TempSensor: connects to the gateway over TLS with its device certificate and publishes readings
at QoS 1, counting a reading as sent only when its PUBACK arrives. paho resends what was not
acknowledged after a reconnect, so every acknowledged reading is one the gateway stored."""

from __future__ import annotations

import json
import random
import ssl
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from devices.diagnose import diagnose
from devices.probe import presented_chain
from devices.readings import Reading, first_reading, next_reading
from gateway.pki import load_certs
from gateway.sync.backoff import next_backoff

API_VERSION = "2021-04-12"

# CONNACK codes (MQTT 3.1.1), in words. paho 2 reports them as MQTT 5 reason codes.
REFUSALS = {
    132: "unacceptable protocol version",
    133: "identifier rejected: the client id is not a valid device id",
    136: "server unavailable: the gateway cannot vouch for devices right now (hub unreachable too long)",
    134: "bad username or password",
    135: "not authorized: the gateway does not recognise this device's certificate",
}
FATAL = {133, 135}


class GatewayNameContext(ssl.SSLContext):
    """Verifies (and sends as SNI) the gateway's hostname even when the socket dials an address.

    paho passes the host it dials as `server_hostname`; with `--connect-address` that is an IP or
    another name, and the check must still be against the name the device was told to trust.
    """

    gateway_hostname: str = ""

    def wrap_socket(self, sock: Any, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        kwargs["server_hostname"] = self.gateway_hostname
        return super().wrap_socket(sock, *args, **kwargs)


@dataclass
class SensorOptions:
    gateway_hostname: str
    port: int
    ca_file: Path
    cert: Path
    key: Path
    device_id: str
    interval: float = 1.0
    count: int = 0
    qos: int = 1
    connect_address: str | None = None
    retry_forever: bool = False


@dataclass
class Events:
    """Where a sensor reports what happens: human lines, or one JSON object per line."""

    out: TextIO = sys.stdout
    as_json: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def emit(self, device_id: str, event: str, text: str, **fields: Any) -> None:
        with self.lock:
            if self.as_json:
                record = {"device": device_id, "event": event, "message": text, **fields}
                print(json.dumps(record), file=self.out, flush=True)
            else:
                print(f"[{device_id}] {text}", file=self.out, flush=True)


class TempSensor:
    def __init__(self, options: SensorOptions, events: Events, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
                 ) -> None:
        self.o, self.events, self.clock = options, events, clock
        self.rand = random.Random()
        self.acked: list[int] = []
        self._inflight: dict[int, Reading] = {}
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self.fatal: str | None = None
        self.client = self._client()

    def _client(self) -> mqtt.Client:
        o = self.o
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=o.device_id, clean_session=False,
                             protocol=mqtt.MQTTv311)
        ctx = GatewayNameContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.gateway_hostname = o.gateway_hostname
        ctx.load_verify_locations(cafile=str(o.ca_file))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(o.cert), str(o.key))
        client.tls_set_context(ctx)
        client.username_pw_set(f"{o.gateway_hostname}/{o.device_id}/?api-version={API_VERSION}")
        client.reconnect_delay_set(1, 60)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    # ---- paho callbacks (paho's thread) -------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        code = int(rc.value)
        if code == 0:
            self.events.emit(self.o.device_id, "connected", f"connected to {self.o.gateway_hostname}:{self.o.port}")
            client.subscribe(f"devices/{self.o.device_id}/messages/devicebound/#", qos=1)
            self._connected.set()
            return
        why = REFUSALS.get(code, f"refused with code {code}")
        self.events.emit(self.o.device_id, "refused", f"the gateway refused the connection: {why}", code=code)
        if code in FATAL and not self.o.retry_forever:
            self.fatal = why
            client.disconnect()

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        self._connected.clear()
        if self.fatal is None and int(rc.value) != 0:
            self.events.emit(self.o.device_id, "disconnected", f"disconnected ({rc}); reconnecting with backoff")

    def _on_publish(self, _c: Any, _u: Any, mid: int, _rc: Any, _p: Any) -> None:
        with self._lock:
            reading = self._inflight.pop(mid, None)
        if reading is not None:
            self.acked.append(reading.seq)
            self.events.emit(self.o.device_id, "acked", f"reading {reading.seq} acknowledged: "
                             f"{reading.temperature} °C, {reading.humidity} %", seq=reading.seq)

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        text = msg.payload.decode(errors="replace")
        self.events.emit(self.o.device_id, "c2d", f"cloud-to-device message on {msg.topic}: {text}",
                         topic=msg.topic, payload=text)

    # ---- the sensor's own loop -------------------------------------------------------------------

    def connect(self) -> bool:
        """Connect, retrying with backoff; explains TLS failures. False on a fatal problem."""
        o = self.o
        address = o.connect_address or o.gateway_hostname
        attempt = 0
        while True:
            try:
                self._connect_tls(address)
                self.client.loop_start()
                return True
            except ssl.SSLCertVerificationError:
                why = self._explain(address)
                self.events.emit(o.device_id, "tls_failed", f"cannot trust the gateway: {why}", reason=why)
                if not o.retry_forever:
                    self.fatal = why
                    return False
            except OSError as exc:
                self.events.emit(o.device_id, "unreachable", f"cannot reach {address}:{o.port}: {exc}")
            wait = next_backoff(attempt, self.rand.random(), base=1.0, cap=60.0)
            attempt += 1
            self.events.emit(o.device_id, "retry", f"retrying in {wait:.1f}s", wait=wait)
            time.sleep(wait)

    def _connect_tls(self, address: str) -> None:
        self.client.connect(address, self.o.port, keepalive=60)

    def _explain(self, address: str) -> str:
        try:
            chain = presented_chain(address, self.o.port, self.o.gateway_hostname)
        except OSError as exc:
            return f"the handshake failed and the gateway's chain could not be fetched: {exc}"
        return diagnose(self.o.gateway_hostname, chain, load_certs(self.o.ca_file), self.clock())

    def run(self, stop: threading.Event) -> int:
        """Publish until `count` readings are acknowledged (0: until stopped). Returns the exit status."""
        if not self.connect():
            return 3
        o = self.o
        reading = first_reading(self.clock(), self.rand.random())
        topic = f"devices/{o.device_id}/messages/events/"
        published = 0
        while not stop.is_set() and self.fatal is None and (o.count == 0 or published < o.count):
            if not self._connected.wait(0.5):
                continue
            with self._lock:
                info = self.client.publish(topic, reading.to_json(), qos=o.qos)
                self._inflight[info.mid] = reading
            published += 1
            reading = next_reading(reading, self.clock(), self.rand.uniform(-1, 1), self.rand.uniform(-1, 1))
            stop.wait(o.interval)
        deadline = time.monotonic() + 30
        while o.count and len(self.acked) < o.count and self.fatal is None and time.monotonic() < deadline:
            time.sleep(0.05)
        self.client.disconnect()
        self.client.loop_stop()
        if self.fatal is not None:
            return 3
        return 0 if not o.count or len(self.acked) >= o.count else 1

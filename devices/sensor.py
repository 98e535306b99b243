"""One TempSensor: dials the gateway over TLS with its device certificate and publishes readings at
QoS 1, counting a reading as sent only when its PUBACK arrives. It also speaks IoT Hub's twin and
direct-method topics (devices/twin.py): reports its firmware and interval, follows a desired interval,
answers `blink` and `reboot`.

The sensor drives paho's network loop itself, on its own thread, so that every way a connection
ends passes through one place that explains it in words and decides whether, and after how long, to
dial again. Unacknowledged readings stay in paho's session and paho republishes them (same packet
id, same seq) after each reconnect: every acknowledged reading is one the gateway accepted.
"""

from __future__ import annotations

import enum
import json
import random
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from devices import twin
from devices.backoff import next_backoff
from devices.diagnose import diagnose
from devices.events import Events
from devices.failures import (
    REFUSALS,
    Explanation,
    Reason,
    connack_refusal,
    connection_lost,
    socket_failure,
    tls_failure,
    verification_failure,
)
from devices.probe import device_verdict, presented_chain
from devices.readings import Reading, first_reading, next_reading
from devices.tls import DeviceTLSContext
from gateway.pki import load_certs

API_VERSION = "2021-04-12"
KEEPALIVE = 60
# Readings published and not yet acknowledged (paho's max_inflight). No new reading is taken while
# the window is full, so a gateway that stops acknowledging slows the sensor instead of growing a queue.
WINDOW = 10
CONNECT_TIMEOUT = 5.0  # TCP connect, and then the TLS handshake: paho's default
# edgeHub gives a client 60 s to send CONNECT; a gateway that has finished the TLS handshake answers
# one in milliseconds, so ten seconds of silence means it is stuck.
CONNACK_TIMEOUT = 10.0
BACKOFF_BASE = 1.0
BACKOFF_CAP = 30.0
LOOP_TICK = 0.2  # longest the sensor waits on the socket before looking at the clock and `stop`

# paho 2 reports an MQTT 3.1.1 CONNACK as an MQTT 5 reason code; its docs say to compare by name.
_V311_CONNACK = {
    "Unsupported protocol version": 1,
    "Client identifier not valid": 2,
    "Server unavailable": 3,
    "Bad user name or password": 4,
    "Not authorized": 5,
}


class Exit(enum.IntEnum):
    OK = 0  # --count readings acknowledged, or stopped while running without --count
    CONFIG = 1  # a file is missing, unreadable or does not fit (reported before dialling)
    REFUSED = 3  # refused, or refusing the gateway, in a way retrying will not fix
    STOPPED = 4  # SIGINT/SIGTERM before --count readings were acknowledged


@dataclass(frozen=True, slots=True)
class SensorOptions:
    gateway_hostname: str
    port: int
    ca_file: Path
    device_id: str
    interval: float = 1.0
    count: int = 0
    qos: int = 1
    connect_address: str | None = None
    retry_forever: bool = False

    @property
    def address(self) -> str:
        return self.connect_address or self.gateway_hostname

    @property
    def username(self) -> str:
        return f"{self.gateway_hostname}/{self.device_id}/?api-version={API_VERSION}"


def _utcnow() -> datetime:
    return datetime.now(UTC)


class TempSensor:
    def __init__(self, options: SensorOptions, context: DeviceTLSContext, events: Events, *,
                 clock: Callable[[], datetime] = _utcnow, rand: random.Random | None = None) -> None:
        self.o, self.context, self.events, self.clock = options, context, events, clock
        self.rand = rand or random.Random()
        self.roots = load_certs(options.ca_file)
        self.topic = f"devices/{options.device_id}/messages/events/"
        self.c2d_filter = f"devices/{options.device_id}/messages/devicebound/#"
        self.interval = options.interval  # a desired `interval` changes it
        self._rid = 0  # request ids of this sensor's twin GETs and reported patches
        self._get_rid = ""
        self._reboot = False
        self.acked: list[int] = []
        self._pending: dict[int, Reading] = {}  # packet id -> reading awaiting its PUBACK
        self._last: Reading | None = None
        self._next_due = 0.0
        self._connack: int | None = None  # this session's CONNACK (MQTT 3.1.1 code); None until it arrives
        self.client = self._client()

    def _client(self) -> mqtt.Client:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.o.device_id, clean_session=False,
                             protocol=mqtt.MQTTv311)
        client.tls_set_context(self.context)
        client.username_pw_set(self.o.username)
        client.max_inflight_messages_set(WINDOW)
        client.connect_timeout = CONNECT_TIMEOUT
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    def _emit(self, event: str, message: str, **fields: object) -> None:
        self.events.emit(self.o.device_id, event, message, **fields)

    # ---- the sensor's life: sessions, and backoff between them ----------------------------------

    def run(self, stop: threading.Event) -> Exit:
        """Publish until `count` readings are acknowledged (0: until `stop`); returns the exit status."""
        attempt = 0
        while True:
            why = self._session(stop)
            if why is None:
                return self._result()
            if self._connack == 0:
                attempt = 0  # it was up: this is a new outage, not one more failure of the last one
            self._report(why)
            if why.fatal and not self.o.retry_forever:
                self._emit("gave_up", "giving up: retrying will not fix this (--retry-forever keeps trying)",
                           reason=why.reason.value)
                return Exit.REFUSED
            wait = next_backoff(attempt, BACKOFF_BASE, BACKOFF_CAP, self.rand.random())
            attempt += 1
            self._emit("retry", f"dialling again in {wait:.1f} s (failures in a row: {attempt})", wait=round(wait, 3),
                       failures=attempt)
            if stop.wait(wait):
                return self._result()

    def _report(self, why: Explanation) -> None:
        if why.reason in REFUSALS:
            event, text = "refused", f"the gateway refused the connection: {why}"
        elif why.reason in (Reason.CONNECTION_LOST, Reason.NO_CONNACK):
            event, text = "disconnected", str(why)
        else:
            event, text = "connect_failed", f"cannot connect: {why}"
        self._emit(event, text, reason=why.reason.value, fatal=why.fatal)

    def _session(self, stop: threading.Event) -> Explanation | None:
        """One connection, from dialling to its end. None when done or stopped, else why it ended."""
        self._connack = None
        self.context.last_error = None
        try:
            self.client.connect(self.o.address, self.o.port, keepalive=KEEPALIVE)
        except ssl.SSLCertVerificationError as exc:
            return self._distrust(exc)
        except ssl.SSLError as exc:
            return self._hung_up(tls_failure(exc.reason, str(exc)))
        except OSError as exc:
            return socket_failure(exc, self.o.address, self.o.port, CONNECT_TIMEOUT)
        connack_deadline = time.monotonic() + CONNACK_TIMEOUT
        while not stop.is_set():
            if self._finished():
                self.client.disconnect()
                self._emit("done", f"all {self.o.count} readings acknowledged", acked=len(self.acked))
                return None
            rc = self.client.loop(self._loop_timeout())
            if self._connack is not None and self._connack != 0:
                return connack_refusal(self._connack, self.o.device_id, self.o.username,
                                       own_cert=self.context.own_cert, now=self.clock())
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                lost = connection_lost(self._connack == 0, self.context.last_error, mqtt.error_string(rc))
                return lost if self._connack == 0 else self._hung_up(lost)
            if self._connack is None and time.monotonic() > connack_deadline:
                self.client.disconnect()
                return Explanation(Reason.NO_CONNACK, f"the gateway finished the TLS handshake but sent no CONNACK "
                                                      f"within {CONNACK_TIMEOUT:g} s")
            if self._connack == 0:
                self._take_reading()
            if self._reboot:
                self._reboot = False
                self.client.disconnect()
                return Explanation(Reason.CONNECTION_LOST, "rebooting, as the direct method `reboot` asked")
        self.client.disconnect()
        return None

    def _distrust(self, exc: ssl.SSLCertVerificationError) -> Explanation:
        """This device refused the gateway's certificate: fetch what the gateway sends and say why."""
        hostname = self.o.gateway_hostname
        try:
            chain = presented_chain(self.o.address, self.o.port, hostname, CONNECT_TIMEOUT)
        except OSError as probe_exc:
            return verification_failure(exc.verify_code, exc.verify_message, hostname,
                                        f"the gateway's chain could not be fetched to say more: {probe_exc}")
        found = diagnose(hostname, chain, self.roots, self.clock())
        if found.reason is Reason.GATEWAY_TRUSTED:
            return verification_failure(exc.verify_code, exc.verify_message, hostname,
                                        "yet the chain it sent to a second connection verifies here")
        return found

    def _hung_up(self, first: Explanation) -> Explanation:
        """The gateway ended the handshake, or the connection before CONNACK, without saying why: ask
        again on a connection that cannot lose the gateway's TLS alert."""
        if first.reason not in (Reason.TLS_FAILED, Reason.CONNECTION_LOST):
            return first
        alert = device_verdict(self.o.address, self.o.port, self.context)
        second = tls_failure(alert.reason, str(alert)) if alert is not None else first
        return second if second.reason is not Reason.TLS_FAILED else first

    # ---- readings --------------------------------------------------------------------------------

    def _taken(self) -> int:
        return self._last.seq if self._last is not None else 0

    def _finished(self) -> bool:
        return self.o.count > 0 and self._taken() >= self.o.count and not self._pending

    def _result(self) -> Exit:
        return Exit.OK if self.o.count == 0 or self._finished() else Exit.STOPPED

    def _can_take(self) -> bool:
        return len(self._pending) < WINDOW and (self.o.count == 0 or self._taken() < self.o.count)

    def _loop_timeout(self) -> float:
        if self._connack == 0 and self._can_take():
            return min(LOOP_TICK, max(0.0, self._next_due - time.monotonic()))
        return LOOP_TICK

    def _take_reading(self) -> None:
        now = time.monotonic()
        if now < self._next_due or not self._can_take():
            return
        self._next_due = now + self.interval  # from now, not from the last due time: no burst after an outage
        self._last = (first_reading(self.clock(), self.rand.random()) if self._last is None else
                      next_reading(self._last, self.clock(), self.rand.uniform(-1, 1), self.rand.uniform(-1, 1)))
        info = self.client.publish(self.topic, self._last.to_json(), qos=self.o.qos)
        if self.o.qos:
            self._pending[info.mid] = self._last
        elif info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._emit("sent", f"reading {self._last.seq} sent (QoS 0: not acknowledged)", seq=self._last.seq)

    # ---- paho callbacks (run inside client.connect/loop/publish, on this sensor's thread) -------

    def _on_connect(self, client: mqtt.Client, _userdata: object, flags: mqtt.ConnectFlags, reason: ReasonCode,
                    _properties: Properties | None) -> None:
        if reason.is_failure:
            self._connack = _V311_CONNACK.get(reason.getName(), reason.value)
            return
        self._connack = 0
        via = f" via {self.o.address}" if self.o.address != self.o.gateway_hostname else ""
        self._emit("connected", f"connected to {self.o.gateway_hostname}:{self.o.port}{via}",
                   session_present=flags.session_present, pending=len(self._pending))
        client.subscribe([(self.c2d_filter, 1), *((f, 0) for f in twin.SUBSCRIPTIONS)])

    def _on_subscribe(self, client: mqtt.Client, _userdata: object, _mid: int, reasons: list[ReasonCode],
                      _properties: Properties | None) -> None:
        if reasons and reasons[0].is_failure:
            self._emit("subscribe_refused", f"the gateway refused the subscription to {self.c2d_filter}: "
                                            "cloud-to-device messages will not arrive")
        else:
            self._emit("subscribed", f"listening for cloud-to-device messages on {self.c2d_filter}")
        if any(r.is_failure for r in reasons[1:]):
            self._emit("subscribe_refused", "the gateway refused the twin and method subscriptions: "
                                            "desired properties and direct methods will not arrive")
            return
        # As IoT Hub tells device apps: report what we are, then GET the twin for the desired state.
        self._rid += 1
        client.publish(twin.report_topic(self._rid), twin.startup_report(self.interval), qos=0)
        self._rid += 1
        self._get_rid = str(self._rid)
        client.publish(twin.get_topic(self._rid), b"", qos=0)

    def _on_publish(self, _client: mqtt.Client, _userdata: object, mid: int, _reason: ReasonCode,
                    _properties: Properties) -> None:
        reading = self._pending.pop(mid, None)
        if reading is None:
            return
        self.acked.append(reading.seq)
        self._emit("acked", f"reading {reading.seq} acknowledged: {reading.temperature} °C, {reading.humidity} %",
                   seq=reading.seq, temperature=reading.temperature, humidity=reading.humidity)

    def _on_message(self, client: mqtt.Client, _userdata: object, msg: mqtt.MQTTMessage) -> None:
        incoming = twin.classify(msg.topic)
        payload = bytes(msg.payload)
        if incoming.kind == "other":
            text = msg.payload.decode(errors="replace")
            self._emit("c2d", f"cloud-to-device message on {msg.topic}: {text}", topic=msg.topic, payload=text)
        elif incoming.kind == "twin_response":
            self._on_twin_response(client, incoming, payload)
        elif incoming.kind == "desired":
            self._follow_desired(client, _json(payload), f"desired patch v{incoming.version}")
        else:
            status, body = twin.answer_method(incoming.method, payload)
            client.publish(twin.method_response_topic(status, incoming.rid), json.dumps(body), qos=0)
            self._emit("method", f"direct method {incoming.method!r} answered {status}: {json.dumps(body)}",
                       method=incoming.method, status=status)
            if incoming.method == "reboot" and status == 200:
                self._reboot = True

    def _on_twin_response(self, client: mqtt.Client, incoming: twin.Incoming, payload: bytes) -> None:
        if incoming.rid != self._get_rid:
            if incoming.status >= 300:
                self._emit("report_refused", f"the gateway refused a reported patch ({incoming.status}): "
                                             f"{payload.decode(errors='replace')}", status=incoming.status)
            return
        if incoming.status != 200:
            self._emit("twin_unavailable", f"twin GET answered {incoming.status}; keeping interval "
                                           f"{self.interval:g} s", status=incoming.status)
            return
        document = _json(payload)
        desired = document.get("desired") if isinstance(document, dict) else None
        self._follow_desired(client, desired, "twin")

    def _follow_desired(self, client: mqtt.Client, desired: Any, source: str) -> None:
        interval, why = twin.desired_interval(desired)
        if why:
            self._emit("desired_refused", f"{source}: {why}; keeping interval {self.interval:g} s")
            return
        if interval is None or interval == self.interval:
            return
        self.interval = interval
        self._next_due = min(self._next_due, time.monotonic() + interval)
        self._rid += 1
        client.publish(twin.report_topic(self._rid), json.dumps({"interval": interval}), qos=0)
        self._emit("interval", f"{source}: reading every {interval:g} s now", interval=interval)


def _json(payload: bytes) -> Any:
    try:
        return json.loads(payload)
    except ValueError:
        return None

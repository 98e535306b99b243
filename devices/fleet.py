"""Many TempSensors in one process: paho's external loop on one selector (epoll), a few dialling threads.

paho's own loop calls select() and opens a socket pair per client: three descriptors per sensor and a
hard stop at select()'s 1,024, about 330 sensors. Here each sensor is one socket registered with the
selector; connects (TCP + TLS handshake, blocking in paho) run on a small pool of dialling threads and
hand the connected client to the selector thread, which does every read, write, keep-alive and reading.
PUBACK latency (publish to acknowledgement) is recorded per reading for the summary's percentiles.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import math
import queue
import selectors
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from devices.backoff import next_backoff
from devices.events import Events
from devices.failures import Explanation, Reason, connack_refusal, connection_lost, socket_failure, tls_failure
from devices.sensor import BACKOFF_BASE, BACKOFF_CAP, CONNACK_TIMEOUT, KEEPALIVE, Exit, TempSensor

DIALLERS = 8  # concurrent TCP + TLS handshakes; the gateway's handshake CPU is the limit, not this
TICK = 0.05  # longest the selector waits before looking at timers
MISC_EVERY = 1.0  # keep-alive pings and CONNACK deadlines are looked at this often


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by nearest rank; 0.0 for no values."""
    if not sorted_values:
        return 0.0
    rank = max(1, min(len(sorted_values), math.ceil(q / 100 * len(sorted_values))))
    return sorted_values[rank - 1]


@dataclass(frozen=True, slots=True)
class FleetSummary:
    sensors: int
    connected: int  # sensors that reached CONNACK 0 at least once
    acked: int
    latency_ms: dict[str, float]  # p50, p90, p99, max

    def sentence(self) -> str:
        lat = self.latency_ms
        return (f"{self.connected} of {self.sensors} sensors connected; {self.acked} readings acknowledged; "
                f"PUBACK latency p50 {lat['p50']:.1f} ms, p90 {lat['p90']:.1f} ms, p99 {lat['p99']:.1f} ms, "
                f"max {lat['max']:.1f} ms")


def summarize(sensors: int, connected: int, acked: int, latencies: list[float]) -> FleetSummary:
    values = sorted(latencies)
    return FleetSummary(sensors, connected, acked, {
        "p50": percentile(values, 50) * 1000, "p90": percentile(values, 90) * 1000,
        "p99": percentile(values, 99) * 1000, "max": (values[-1] if values else 0.0) * 1000})


class FleetSensor(TempSensor):
    """A TempSensor driven from outside: the fleet dials it, reads and writes its socket, and times it."""

    latencies: list[float]
    fleet: Fleet
    reading_due: float | None = None  # the live reading timer; older heap entries are stale
    waiting_for_window: bool = False  # no timer: the next PUBACK schedules the next reading
    attempt: int = 0
    ever_connected: bool = False
    result: Exit = Exit.STOPPED

    def prepare(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.latencies = []
        self._sent_at: dict[int, float] = {}
        self.client.on_socket_register_write = lambda _c, _u, _s: fleet.want_write(self)
        self.client.on_socket_unregister_write = lambda _c, _u, _s: None

    def _take_reading(self) -> None:
        before = self._last
        super()._take_reading()
        if self._last is not before and self._last is not None and self.o.qos:
            self._sent_at[self._last.seq] = time.monotonic()

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: mqtt.ConnectFlags, reason: ReasonCode,
                    properties: Properties | None) -> None:
        super()._on_connect(client, userdata, flags, reason, properties)
        if self._connack == 0:
            self.ever_connected = True
            self.attempt = 0

    def _on_publish(self, client: mqtt.Client, userdata: object, mid: int, reason: ReasonCode,
                    properties: Properties) -> None:
        reading = self._pending.get(mid)
        super()._on_publish(client, userdata, mid, reason, properties)
        if reading is not None:
            sent = self._sent_at.pop(reading.seq, None)
            if sent is not None:
                self.latencies.append(time.monotonic() - sent)
        if self.waiting_for_window and self._connack == 0:
            self.waiting_for_window = False
            self.fleet.schedule_reading(self, time.monotonic())

    def dial(self) -> Explanation | None:
        """TCP + TLS + CONNECT sent (blocking; on a dialling thread). None when the socket is up."""
        self._connack = None
        self.context.last_error = None
        try:
            self.client.connect(self.o.address, self.o.port, keepalive=KEEPALIVE)
        except ssl.SSLCertVerificationError as exc:
            return self._distrust(exc)
        except ssl.SSLError as exc:
            return self._hung_up(tls_failure(exc.reason, str(exc)))
        except OSError as exc:
            return socket_failure(exc, self.o.address, self.o.port, 5.0)
        return None


class Fleet:
    def __init__(self, sensors: list[FleetSensor], events: Events, *, diallers: int = DIALLERS) -> None:
        self.sensors, self.events, self.diallers = sensors, events, diallers
        self.selector = selectors.DefaultSelector()
        self._dial: queue.Queue[FleetSensor | None] = queue.Queue()
        self._dialled: queue.Queue[tuple[FleetSensor, Explanation | None]] = queue.Queue()
        self._writers: set[FleetSensor] = set()
        self._writers_lock = threading.Lock()
        self._timers: list[tuple[float, int, str, FleetSensor]] = []
        self._order = itertools.count()
        self._live: dict[int, FleetSensor] = {}  # fileno -> sensor
        self._connack_due: dict[FleetSensor, float] = {}
        for sensor in sensors:
            sensor.prepare(self)

    # ---- called from paho (any thread) ------------------------------------------------------------

    def want_write(self, sensor: FleetSensor) -> None:
        with self._writers_lock:
            self._writers.add(sensor)

    # ---- dialling threads --------------------------------------------------------------------------

    def _dialler(self) -> None:
        while True:
            sensor = self._dial.get()
            if sensor is None:
                return
            self._dialled.put((sensor, sensor.dial()))

    # ---- the selector thread -----------------------------------------------------------------------

    def _timer(self, due: float, kind: str, sensor: FleetSensor) -> None:
        heapq.heappush(self._timers, (due, next(self._order), kind, sensor))

    def schedule_reading(self, sensor: FleetSensor, due: float) -> None:
        """The sensor's one reading timer (it replaces any earlier one)."""
        sensor.reading_due = due
        self._timer(due, "reading", sensor)

    def run(self, stop: threading.Event) -> list[Exit]:
        """Until `stop` (or every sensor is done or has given up); each sensor's exit status."""
        threads = [threading.Thread(target=self._dialler, name=f"dialler-{i}", daemon=True)
                   for i in range(self.diallers)]
        for t in threads:
            t.start()
        for sensor in self.sensors:
            self._dial.put(sensor)
        next_misc = time.monotonic() + MISC_EVERY
        while not stop.is_set() and not self._all_done():
            self._take_dialled()
            now = time.monotonic()
            self._run_timers(now)
            if now >= next_misc:
                next_misc = now + MISC_EVERY
                self._misc(now)
            self._flush_writes()  # what the timers published goes out now, not after the next wait
            wait = min(TICK, max(0.0, self._timers[0][0] - now)) if self._timers else TICK
            for key, _mask in self.selector.select(wait):
                self._readable(key.data)
            self._flush_writes()
        for _ in threads:
            self._dial.put(None)
        self._shutdown()
        for sensor in self.sensors:
            if sensor.result is Exit.STOPPED:
                sensor.result = sensor._result()
        return [s.result for s in self.sensors]

    def _all_done(self) -> bool:
        return all(s.result is not Exit.STOPPED for s in self.sensors)

    def _take_dialled(self) -> None:
        while True:
            try:
                sensor, why = self._dialled.get_nowait()
            except queue.Empty:
                return
            if why is not None:
                self._ended(sensor, why)
                continue
            sock = sensor.client.socket()
            if sock is None:
                self._ended(sensor, Explanation(Reason.CONNECTION_LOST, "the socket closed while connecting"))
                continue
            self._live[sock.fileno()] = sensor
            self.selector.register(sock, selectors.EVENT_READ, sensor)
            self._connack_due[sensor] = time.monotonic() + CONNACK_TIMEOUT
            self.want_write(sensor)

    def _flush_writes(self) -> None:
        with self._writers_lock:
            writers, self._writers = self._writers, set()
        for sensor in writers:
            if sensor.client.socket() is None or (sensor not in self._connack_due and sensor._connack != 0):
                continue
            rc = sensor.client.loop_write()
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                self._lost(sensor, rc)
                continue
            sock = sensor.client.socket()
            if sock is not None and sock.fileno() in self._live:
                events = selectors.EVENT_READ | (selectors.EVENT_WRITE if sensor.client.want_write() else 0)
                self.selector.modify(sock, events, sensor)

    def _readable(self, sensor: FleetSensor) -> None:
        sock = sensor.client.socket()
        if sock is None:
            return
        if sensor.client.want_write():
            self.want_write(sensor)
        while True:
            rc = sensor.client.loop_read()
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                self._lost(sensor, rc)
                return
            if sensor._connack is not None and sensor._connack != 0:
                self._ended(sensor, connack_refusal(sensor._connack, sensor.o.device_id, sensor.o.username))
                return
            if sensor._connack == 0 and sensor in self._connack_due:
                del self._connack_due[sensor]
                sensor.waiting_for_window = False
                self.schedule_reading(sensor, time.monotonic())
            pending = getattr(sock, "pending", None)
            if pending is None or not pending():
                return  # TLS may hold decrypted bytes select() cannot see: read them first

    def _run_timers(self, now: float) -> None:
        while self._timers and self._timers[0][0] <= now:
            due, _n, kind, sensor = heapq.heappop(self._timers)
            if kind == "dial":
                self._dial.put(sensor)
            elif kind == "reading" and due == sensor.reading_due:
                sensor.reading_due = None
                if sensor._connack != 0 or sensor.client.socket() is None:
                    continue  # the connection ended; the next CONNACK schedules readings again
                if sensor._finished():
                    sensor.result = Exit.OK
                    self._close(sensor)
                    sensor._emit("done", f"all {sensor.o.count} readings acknowledged", acked=len(sensor.acked))
                    continue
                sensor._take_reading()
                if sensor._can_take():
                    self.schedule_reading(sensor, max(sensor._next_due, now))
                elif sensor.o.count == 0 or sensor._taken() < sensor.o.count:
                    sensor.waiting_for_window = True  # the window is full: the next PUBACK schedules it
                else:
                    self.schedule_reading(sensor, now + 0.1)  # all taken: look again for the last PUBACKs

    def _misc(self, now: float) -> None:
        for sensor, due in list(self._connack_due.items()):
            if now > due:
                self._ended(sensor, Explanation(Reason.NO_CONNACK, "the gateway finished the TLS handshake but "
                                                                   f"sent no CONNACK within {CONNACK_TIMEOUT:g} s"))
        for sensor in list(self._live.values()):
            if sensor.client.loop_misc() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                self._lost(sensor, MQTTErrorCode.MQTT_ERR_CONN_LOST)

    # ---- ends of connections -----------------------------------------------------------------------

    def _lost(self, sensor: FleetSensor, rc: MQTTErrorCode) -> None:
        self._ended(sensor, connection_lost(sensor._connack == 0, sensor.context.last_error, mqtt.error_string(rc)))

    def _close(self, sensor: FleetSensor) -> None:
        self._connack_due.pop(sensor, None)
        for fileno, owner in list(self._live.items()):
            if owner is sensor:
                del self._live[fileno]
                with contextlib.suppress(KeyError, ValueError):
                    self.selector.unregister(fileno)
        sensor.client.disconnect()
        sensor.client.loop_write()
        sock = sensor.client.socket()
        if sock is not None:
            sock.close()

    def _ended(self, sensor: FleetSensor, why: Explanation) -> None:
        """One connection of `sensor` ended: explain it, then dial again after a back-off, or give up."""
        was_up = sensor._connack == 0
        self._close(sensor)
        sensor._connack = None
        if was_up:
            sensor.attempt = 0
        sensor._report(why)
        if why.fatal and not sensor.o.retry_forever:
            sensor._emit("gave_up", "giving up: retrying will not fix this (--retry-forever keeps trying)",
                         reason=why.reason.value)
            sensor.result = Exit.REFUSED
            return
        wait = next_backoff(sensor.attempt, BACKOFF_BASE, BACKOFF_CAP, sensor.rand.random())
        sensor.attempt += 1
        sensor._emit("retry", f"dialling again in {wait:.1f} s (failures in a row: {sensor.attempt})",
                     wait=round(wait, 3), failures=sensor.attempt)
        self._timer(time.monotonic() + wait, "dial", sensor)

    def _shutdown(self) -> None:
        for sensor in list(self._live.values()):
            self._close(sensor)
        self.selector.close()

    def summary(self) -> FleetSummary:
        latencies = [x for s in self.sensors for x in s.latencies]
        return summarize(len(self.sensors), sum(s.ever_connected for s in self.sensors),
                         sum(len(s.acked) for s in self.sensors), latencies)

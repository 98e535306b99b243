"""`python -m bench.leanload --port P --ca-file ROOT --fleet N --fleet-dir DIR --acks-file F`: N TempSensor-like
devices in one uvloop process, cheap enough per reading to offer 5,000 readings/s from one core.

Each device is an asyncio.Protocol on its own TLS connection with its own certificate; it connects like a
TempSensor (CONNECT with the IoT Hub username, SUBSCRIBE to cloud-to-device and twin topics, a twin report
and GET) and then publishes one QoS 1 reading per interval. One timer publishes for every device due in a
tick (their phases spread over the interval) instead of a sleep per device, and PUBACKs are cut from the
stream by hand. A refused or failed connect is counted by reason and dialled again after 1-5 s.

stdout: one JSON progress line a second and a summary at the end (after SIGINT: the last PUBACKs, then
DISCONNECT). The acked seqs of every device go to --acks-file as ranges: {"device id": [[first, last], ...]}.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import resource
import signal
import ssl
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import uvloop

from bench.leanwire import (
    CONNACK,
    PUBACK,
    PUBLISH,
    Schedule,
    StreamError,
    add_to_ranges,
    publish_qos1_id,
    qos1_publish,
    reading_payload,
    split_packets,
    topic_field,
)
from devices import twin
from devices.cli import fleet_members
from devices.fleet import summarize
from devices.sensor import API_VERSION, KEEPALIVE, WINDOW
from gateway.mqtt import codec

TICK = 0.005  # the publish timer's period; the interval's slots are this long
DIALLERS = 64  # connects (TCP + TLS + CONNACK) in flight at once
CONNECT_TIMEOUT = 10.0  # TCP + TLS handshake
CONNACK_TIMEOUT = 10.0  # as devices/sensor.py: a gateway past the handshake answers CONNECT in milliseconds
BACKOFF = (1.0, 5.0)  # seconds before dialling again after a failure, drawn uniformly
PING_AFTER = KEEPALIVE / 2  # silent this long: PINGREQ, so the gateway's keep-alive never fires
DRAIN = 3.0  # seconds after SIGINT for the last PUBACKs
PROGRESS_EVERY = 1.0
PINGREQ, DISCONNECT = b"\xc0\x00", b"\xe0\x00"


class Device(asyncio.Protocol):
    """One device's connection: feeds the gateway's bytes through split_packets and keeps its readings."""

    def __init__(self, fleet: LeanFleet, device_id: str, cert: Path, key: Path) -> None:
        self.fleet, self.device_id, self.cert, self.key = fleet, device_id, cert, key
        self.topic = f"devices/{device_id}/messages/events/"
        self.topic_field = topic_field(self.topic)
        self.username = f"{fleet.hostname}/{device_id}/?api-version={API_VERSION}"
        self.context: ssl.SSLContext | None = None  # built at the first dial, kept for the redials
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.connack: asyncio.Future[int] | None = None
        self.up = False
        self.ever_up = False
        self.seq = 0
        self.packet_id = 0
        self.inflight: dict[int, tuple[int, float]] = {}  # packet id -> (seq, sent at)
        self.acked: list[list[int]] = []
        self.last_sent = 0.0
        self.temperature = 18.0 + 6.0 * fleet.rand.random()
        self.humidity = 40.0 + 20.0 * fleet.rand.random()

    # ---- asyncio.Protocol ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's TLS transport is not an asyncio.Transport
        self.buf.clear()
        self.transport.write(codec.encode_connect(client_id=self.device_id, clean_session=False, keep_alive=KEEPALIVE,
                                             username=self.username))

    def data_received(self, data: bytes) -> None:
        if not self.buf and len(data) == 4 and data[0] == 0x40:  # one whole PUBACK, nearly every time
            self._acked((data[2] << 8) | data[3], self.fleet.loop.time())
            return
        self.buf += data
        try:
            packets = split_packets(self.buf)
        except StreamError as exc:
            self.fleet.count_failure(f"stream:{exc}")
            self.close()
            return
        now = self.fleet.loop.time()
        for first, body in packets:
            kind = first >> 4
            if kind == PUBACK:
                self._acked(int.from_bytes(body[:2], "big"), now)
            elif kind == CONNACK and self.connack is not None and not self.connack.done():
                self.connack.set_result(body[1])
            elif kind == PUBLISH:
                packet_id = publish_qos1_id(first, body)
                if packet_id is not None and self.transport is not None:
                    self.transport.write(codec.encode_puback(packet_id))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.connack is not None and not self.connack.done():
            self.connack.set_exception(exc or ConnectionResetError("closed before CONNACK"))
        if self.up:
            self.up = False
            self.fleet.disconnected(self, exc)

    # ---- readings -------------------------------------------------------------------------------------

    def publish(self, now: float, ts: str) -> None:
        """The reading due now, unless WINDOW readings still wait for their PUBACK (then it is 'behind')."""
        if len(self.inflight) >= WINDOW or self.transport is None:
            self.fleet.behind += 1
            return
        rand = self.fleet.rand.random
        self.temperature = min(45.0, max(-10.0, self.temperature + 0.5 * rand() - 0.25))
        self.humidity = min(95.0, max(5.0, self.humidity + rand() - 0.5))
        self.seq += 1
        self.packet_id = self.packet_id % 65535 + 1
        payload = reading_payload(self.seq, self.temperature, self.humidity, ts, self.fleet.pad)
        self.transport.write(qos1_publish(self.topic, self.topic_field, self.packet_id, payload))
        self.inflight[self.packet_id] = (self.seq, now)
        self.last_sent = now
        self.fleet.sent += 1

    def _acked(self, packet_id: int, now: float) -> None:
        entry = self.inflight.pop(packet_id, None)
        if entry is None:
            return
        add_to_ranges(self.acked, entry[0])
        self.fleet.acked += 1
        self.fleet.latencies.append(now - entry[1])

    def ping_if_idle(self, now: float) -> None:
        if self.up and self.transport is not None and now - self.last_sent > PING_AFTER:
            self.transport.write(PINGREQ)
            self.last_sent = now

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class LeanFleet:
    def __init__(self, args: argparse.Namespace, ids: list[str]) -> None:
        self.args = args
        self.hostname: str = args.gateway_hostname
        self.pad = b"x" * args.pad
        self.loop = asyncio.get_running_loop()
        self.rand = random.Random()
        self.devices = [Device(self, i, args.fleet_dir / f"{i}.cert.pem", args.fleet_dir / f"{i}.key.pem")
                        for i in ids]
        self.dial_queue: asyncio.Queue[Device] = asyncio.Queue()
        self.connected = self.sent = self.acked = self.behind = self.disconnects = self.contexts = 0
        self.connects = 0  # CONNACK 0s, reconnections included
        self.failures: Counter[str] = Counter()
        self.latencies: list[float] = []
        self.last_new_at = time.monotonic()
        self.stopping = False

    # ---- connecting -------------------------------------------------------------------------------------

    def context_for(self, device: Device) -> ssl.SSLContext:
        if device.context is None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the gateway's chain and name
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_verify_locations(cafile=str(self.args.ca_file))
            ctx.load_cert_chain(str(device.cert), str(device.key))
            device.context = ctx
            self.contexts += 1
        return device.context

    async def dialler(self) -> None:
        while not self.stopping:
            device = await self.dial_queue.get()
            if self.stopping:
                return
            reason = await self.dial(device)
            if reason is not None:
                self.count_failure(reason)
                device.close()
                self.redial_later(device)

    async def dial(self, device: Device) -> str | None:
        """None once the device is up; else why not, as a short reason code."""
        device.connack = self.loop.create_future()
        try:
            await asyncio.wait_for(self.loop.create_connection(
                lambda: device, self.args.connect_address, self.args.port, ssl=self.context_for(device),
                server_hostname=self.hostname, ssl_handshake_timeout=CONNECT_TIMEOUT), CONNECT_TIMEOUT + 1)
            code = await asyncio.wait_for(device.connack, CONNACK_TIMEOUT)
        except ssl.SSLError as exc:
            return f"tls:{exc.reason or type(exc).__name__}"
        except TimeoutError:
            return "timeout:connack" if device.transport is not None else "timeout:handshake"
        except OSError as exc:
            return f"socket:{type(exc).__name__}"
        finally:
            if device.connack.done() and not device.connack.cancelled():
                device.connack.exception()  # retrieved: a late connection_lost must not log it
        if code != 0:
            return f"connack:{code}"
        self.came_up(device)
        return None

    def came_up(self, device: Device) -> None:
        assert device.transport is not None
        device.up = True
        device.last_sent = self.loop.time()
        self.connected += 1
        self.connects += 1
        if not device.ever_up:
            device.ever_up = True
            self.last_new_at = time.monotonic()
        # What a TempSensor does once connected, so the gateway holds the same subscriptions and twin traffic.
        filters = [(f"devices/{device.device_id}/messages/devicebound/#", 1), *((f, 0) for f in twin.SUBSCRIPTIONS)]
        device.transport.write(codec.encode_subscribe(1, filters) +
                               codec.encode_publish(twin.report_topic(1), twin.startup_report(self.args.interval)) +
                               codec.encode_publish(twin.get_topic(2), b""))

    def disconnected(self, device: Device, exc: Exception | None) -> None:
        self.connected -= 1
        device.inflight.clear()  # not acknowledged, so not counted; the next readings carry on the seqs
        if self.stopping:
            return
        self.disconnects += 1
        self.count_failure(f"lost:{type(exc).__name__ if exc else 'eof'}")
        self.redial_later(device)

    def redial_later(self, device: Device) -> None:
        if not self.stopping:
            self.loop.call_later(self.rand.uniform(*BACKOFF), self.dial_queue.put_nowait, device)

    def count_failure(self, reason: str) -> None:
        self.failures[reason] += 1

    # ---- publishing and reporting ----------------------------------------------------------------------

    async def publish_loop(self) -> None:
        schedule = Schedule(len(self.devices), self.args.interval, TICK, self.loop.time())
        members = [[self.devices[i] for i in slot] for slot in schedule.members()]
        while not self.stopping:
            now = self.loop.time()
            due = schedule.due(now)
            if due:
                ts = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
                for slot in due:
                    for device in members[slot]:
                        if device.up:
                            device.publish(now, ts)
            await asyncio.sleep(max(0.0, schedule.next_at() - self.loop.time()))

    async def progress_loop(self) -> None:
        while not self.stopping:
            await asyncio.sleep(PROGRESS_EVERY)
            now = self.loop.time()
            for device in self.devices:
                device.ping_if_idle(now)
            self.emit("progress", **self.figures())

    def figures(self) -> dict[str, object]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {"connected": self.connected, "ever_connected": sum(d.ever_up for d in self.devices),
                "connects": self.connects, "sent": self.sent, "acked": self.acked, "behind": self.behind,
                "disconnects": self.disconnects, "failures": dict(self.failures),
                "since_last_new": round(time.monotonic() - self.last_new_at, 3),
                "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2), "rss_mib": rss_mib(),
                "peak_rss_mib": round(usage.ru_maxrss / 1024, 1), "contexts": self.contexts}

    def emit(self, event: str, **fields: object) -> None:
        print(json.dumps({"device": "fleet", "event": event, **fields}), flush=True)

    async def run(self, stop: asyncio.Event) -> None:
        for device in self.devices:
            self.dial_queue.put_nowait(device)
        tasks = [asyncio.create_task(self.dialler()) for _ in range(DIALLERS)]
        tasks += [asyncio.create_task(self.publish_loop()), asyncio.create_task(self.progress_loop())]
        await stop.wait()
        self.stopping = True
        for task in tasks:
            task.cancel()
        for _ in range(round(DRAIN / 0.05)):
            if not any(d.inflight for d in self.devices if d.up):
                break
            await asyncio.sleep(0.05)
        for device in self.devices:
            if device.transport is not None:
                device.transport.write(DISCONNECT)
                device.close()
        await asyncio.sleep(0.5)  # the closes go out
        self.finish()

    def finish(self) -> None:
        acks = {d.device_id: d.acked for d in self.devices if d.acked}
        self.args.acks_file.write_text(json.dumps(acks, separators=(",", ":")))
        summary = summarize(len(self.devices), sum(d.ever_up for d in self.devices), self.acked, self.latencies)
        self.emit("summary", message=summary.sentence(), sensors=summary.sensors, latency_ms=summary.latency_ms,
                  **self.figures())


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return round(int(statm.read().split()[1]) * resource.getpagesize() / 2**20, 1)


def raise_open_files(want: int) -> None:
    """One descriptor per device plus a few; as far as the hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want if hard == resource.RLIM_INFINITY else min(want, hard), hard))


async def amain(args: argparse.Namespace) -> int:
    ids = fleet_members((p.name for p in args.fleet_dir.iterdir()), args.fleet)
    if len(ids) < args.fleet:
        print(f"leanload: only {len(ids)} ID.cert.pem files in {args.fleet_dir}", file=sys.stderr)
        return 1
    raise_open_files(args.fleet + 64)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await LeanFleet(args, ids).run(stop)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.leanload")
    p.add_argument("--gateway-hostname", default="edgegateway.local")
    p.add_argument("--connect-address", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--ca-file", type=Path, required=True)
    p.add_argument("--fleet", type=int, required=True)
    p.add_argument("--fleet-dir", type=Path, required=True)
    p.add_argument("--interval", type=float, default=1.0)
    p.add_argument("--acks-file", type=Path, required=True)
    p.add_argument("--pad", type=int, default=0, help="bytes of padding added to each reading")
    args = p.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        return uvloop.run(amain(args))
    return 1


if __name__ == "__main__":
    sys.exit(main())

"""Twin GET round trip (not a test): a device's `$iothub/twin/GET` to its `$iothub/twin/res/200`, through
a real `edgegate run` and a real hub-mock, with 1,000 other devices connected and subscribed; first
with the hub online (the GET goes to the hub and back), then with the hub's API down (answered from
the gateway's twin cache). Also: how long a desired patch takes from the hub's admin call to the device,
and a direct method from the admin call to the device's answer back at the caller.

    .venv/bin/python -m bench.twin_bench [--devices 1000] [--gets 500]

Prints a markdown table (p50/p99/max in ms) and one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from bench.edgegate_target import EdgegateTarget
from bench.pki import HOSTNAME, BenchPKI
from bench.targets import REPO
from gateway.mqtt import codec

PROBE = "twin-probe"


class Probe:
    """A bare MQTT 3.1.1 client over TLS (the project's codec), enough for twin round trips."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.framer = codec.Framer(1 << 20)

    @classmethod
    async def connect(cls, port: int, root: Path, cert: Path, key: Path) -> Probe:
        ctx = ssl.create_default_context(cafile=str(root))
        ctx.check_hostname = False
        ctx.load_cert_chain(str(cert), str(key))
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=HOSTNAME)
        probe = cls(reader, writer)
        writer.write(codec.encode_connect(client_id=PROBE, clean_session=True, keep_alive=600))
        await probe.next_packet()  # CONNACK
        writer.write(codec.encode_subscribe(1, [("$iothub/twin/res/#", 0),
                                                ("$iothub/twin/PATCH/properties/desired/#", 0),
                                                ("$iothub/methods/POST/#", 0)]))
        await probe.next_packet()  # SUBACK
        return probe

    async def next_packet(self) -> codec.RawPacket:
        while True:
            packet = self.framer.next_packet()
            if packet is not None:
                return packet
            data = await self.reader.read(65536)
            if not data:
                raise ConnectionError("the gateway closed the probe's connection")
            self.framer.feed(data)

    async def next_publish(self, contains: str) -> codec.Publish:
        while True:
            packet = await self.next_packet()
            if packet.type == 3:
                publish = codec.decode_publish(packet)
                if contains in publish.topic:
                    return publish

    async def round_trip(self, topic: str, payload: bytes, rid: int) -> tuple[float, str]:
        start = time.perf_counter()
        self.writer.write(codec.encode_publish(topic, payload, qos=0))
        answer = await self.next_publish(f"$rid={rid}")
        return (time.perf_counter() - start) * 1000, answer.topic


def _summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"p50": round(statistics.median(ordered), 2), "p99": round(ordered[int(len(ordered) * 0.99) - 1], 2),
            "max": round(ordered[-1], 2), "n": len(ordered)}


async def _gets(probe: Probe, count: int, first_rid: int) -> list[float]:
    samples = []
    for i in range(count):
        ms, topic = await probe.round_trip(f"$iothub/twin/GET/?$rid={first_rid + i}", b"", first_rid + i)
        if not topic.startswith("$iothub/twin/res/200/"):
            raise RuntimeError(f"twin GET answered {topic}")
        samples.append(ms)
    return samples


def _admin(url: str, method: str, path: str, body: object) -> bytes:
    request = urllib.request.Request(url + path, data=json.dumps(body).encode(), method=method,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=20) as response:
        return bytes(response.read())


async def measure(target: EdgegateTarget, pki: BenchPKI, gets: int) -> dict[str, dict[str, float]]:
    assert target.hub is not None
    cert, key = pki.device_files(PROBE)
    probe = await Probe.connect(target.port, pki.root_path, cert, key)
    await probe.round_trip("$iothub/twin/PATCH/properties/reported/?$rid=0",
                           json.dumps({"firmware": "1.0.0", "interval": 5}).encode(), 0)
    await _gets(probe, 20, 1_000)  # warm-up
    online = await _gets(probe, gets, 10_000)

    admin = target.hub.admin.url
    desired = []
    for version in range(2, 52):
        start = time.perf_counter()
        await asyncio.to_thread(_admin, admin, "PATCH", f"/admin/twins/{PROBE}/desired", {"interval": version})
        await probe.next_publish(f"$version={version}")
        desired.append((time.perf_counter() - start) * 1000)

    methods = []
    for n in range(50):
        start = time.perf_counter()
        call = asyncio.create_task(asyncio.to_thread(
            _admin, admin, "POST", f"/admin/methods/{PROBE}/blink", {"payload": {"n": n}, "timeout": 10}))
        request = await probe.next_publish("$iothub/methods/POST/blink/")
        rid = request.topic.split("$rid=", 1)[1]
        probe.writer.write(codec.encode_publish(f"$iothub/methods/res/200/?$rid={rid}", request.payload, qos=0))
        answer = json.loads(await call)
        methods.append((time.perf_counter() - start) * 1000)
        if answer != {"status": 200, "payload": {"n": n}}:
            raise RuntimeError(f"method answered {answer}")

    await asyncio.to_thread(_admin, admin, "POST", "/admin/faults", {"action": "down", "value": None})
    await _gets(probe, 20, 20_000)  # the first one finds the hub gone; the rest go straight to the cache
    cached = await _gets(probe, gets, 30_000)
    await asyncio.to_thread(_admin, admin, "POST", "/admin/faults", {"action": "clear", "value": None})
    probe.writer.close()
    return {"online": _summary(online), "cache": _summary(cached), "desired": _summary(desired),
            "method": _summary(methods)}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.twin_bench")
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--gets", type=int, default=500)
    args = parser.parse_args()
    workdir = REPO / "bench" / "results" / "twin"
    workdir.mkdir(parents=True, exist_ok=True)
    pki = BenchPKI.create(workdir / "pki")
    ids = [f"dev-{i:05d}" for i in range(args.devices)]
    for device_id in [*ids, PROBE, "probe-0"]:
        pki.device_files(device_id)
    target = EdgegateTarget("edgegate", pki, workdir)
    target.prepare([*ids, PROBE, "probe-0"])
    target.start()
    load = None
    try:
        load = subprocess.Popen(
            [sys.executable, "-m", "bench.conndriver", str(target.port), str(pki.root_path),
             str(pki.directory / "devices"), "0", str(args.devices), "--subscribe"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO, text=True)
        assert load.stdout is not None
        held = json.loads(load.stdout.readline())
        if held["admitted"] != args.devices:
            raise RuntimeError(f"only {held} of {args.devices} devices connected")
        results = asyncio.run(measure(target, pki, args.gets))
    finally:
        if load is not None and load.stdin is not None:
            load.stdin.close()
            load.wait(30)
        target.stop()
    print(f"| twin round trip, {args.devices:,} devices connected | p50 ms | p99 ms | max ms | samples |")
    print("|---|---|---|---|---|")
    for name, label in (("online", "twin GET, hub online (gateway → hub → gateway)"),
                        ("cache", "twin GET, hub down (from the gateway's cache)"),
                        ("desired", "desired patch, hub admin call → device"),
                        ("method", "direct method, hub admin call → device → answer at the caller")):
        row = results[name]
        print(f"| {label} | {row['p50']} | {row['p99']} | {row['max']} | {int(row['n'])} |")
    print(json.dumps({"devices": args.devices, **results}))


if __name__ == "__main__":
    main()

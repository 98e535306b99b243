"""A fleet of QoS 1 publishers: COUNT devices (TLS with each device's own cert), each publishing one
PAYLOAD-byte message every PERIOD seconds for SECONDS, timing every PUBACK. Prints one JSON line:
{"connected", "sent", "acked", "p50_ms", "p99_ms", "max_ms", "seconds"}. Device starts are spread over
one period, so the fleet's load is smooth (1,000 devices x 1 msg/s = 1,000 msg/s).

    python -m bench.fleet PORT ROOT DEVICE_DIR FIRST COUNT [--period 1] [--seconds 20] [--payload 100]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import ssl
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from gateway.mqtt import codec

CONNECT_TIMEOUT = 60.0
REPO = Path(__file__).resolve().parent.parent
counts_hook: list[Callable[[], None]] = []  # tells `run` when every device is in (or failed)


def _context(root: str, cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=root)
    ctx.check_hostname = False
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


def drive(port: int, root: Path, device_dir: Path, first: int, count: int, seconds: float, *, payload: int = 100,
          connected: Callable[[], None] = lambda: None) -> dict[str, float]:
    """Run this fleet as a process against `port`: once every device is in, `connected()` (meters started
    there leave the handshakes out), then `seconds` of publishing; its result line as a dict."""
    proc = subprocess.Popen([sys.executable, "-m", "bench.fleet", str(port), str(root), str(device_dir), str(first),
                             str(count), "--seconds", str(seconds), "--payload", str(payload), "--wait-stdin"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert proc.stdin is not None
    assert proc.stdout is not None
    first_line = json.loads(proc.stdout.readline() or "{}")
    if first_line.get("connected") != count:
        proc.kill()
        raise RuntimeError(f"only {first_line.get('connected')} of {count} fleet devices connected to port {port}")
    time.sleep(1.0)  # the admissions' own writes settle
    connected()
    proc.stdin.write("go\n")
    proc.stdin.flush()
    result: dict[str, float] = json.loads(proc.stdout.readline() or "{}")
    if proc.wait(60) != 0 or "acked" not in result:
        raise RuntimeError(f"bench.fleet failed against port {port}: {result}")
    return result


async def _read_pubacks(reader: asyncio.StreamReader, sent_at: dict[int, float], latencies: list[float]) -> None:
    while True:
        header = await reader.readexactly(2)
        body = await reader.readexactly(header[1])  # PUBACK and PINGRESP bodies are short
        if header[0] >> 4 == 4:
            started = sent_at.pop(int.from_bytes(body[:2], "big"), None)
            if started is not None:
                latencies.append(time.perf_counter() - started)


async def _device(args: argparse.Namespace, n: int, device_id: str, ctx: ssl.SSLContext, window: dict[str, float],
                  latencies: list[float], counts: dict[str, int], gate: asyncio.Semaphore,
                  ready: asyncio.Event) -> None:
    async with gate:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", args.port, ssl=ctx, server_hostname="edgegateway.local"),
            CONNECT_TIMEOUT)
        writer.write(codec.encode_connect(client_id=device_id, clean_session=True, keep_alive=600))
        connack = await asyncio.wait_for(reader.readexactly(4), CONNECT_TIMEOUT)
    if connack[3] != 0:
        writer.close()
        return
    counts["connected"] += 1
    for hook in counts_hook:
        hook()
    await ready.wait()
    sent_at: dict[int, float] = {}
    acks = asyncio.get_running_loop().create_task(_read_pubacks(reader, sent_at, latencies))
    topic = f"devices/{device_id}/messages/events/"
    packet_id = 0
    next_at = window["start"] + args.period * n / args.count
    try:
        while next_at < window["end"]:
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            packet_id = packet_id % 65535 + 1
            payload = (b'{"device":"%s","n":%d,"t":21.5}' % (device_id.encode(), packet_id)).ljust(args.payload, b" ")
            sent_at[packet_id] = time.perf_counter()
            writer.write(codec.encode_publish(topic, payload, qos=1, packet_id=packet_id))
            counts["sent"] += 1
            next_at += args.period
        await asyncio.sleep(2.0)  # the last PUBACKs
    finally:
        acks.cancel()
        writer.close()


async def run(args: argparse.Namespace) -> dict[str, float]:
    devices = Path(args.device_dir)
    ids = [f"dev-{i:05d}" for i in range(args.first, args.first + args.count)]
    contexts = [_context(args.root, devices / f"{d}.pem", devices / f"{d}.key") for d in ids]
    latencies: list[float] = []
    counts = {"connected": 0, "sent": 0}
    gate = asyncio.Semaphore(64)
    ready = asyncio.Event()
    window: dict[str, float] = {}
    tasks = [asyncio.ensure_future(_device(args, n, d, c, window, latencies, counts, gate, ready))
             for n, (d, c) in enumerate(zip(ids, contexts, strict=True))]
    all_in = asyncio.Event()

    def settled(_task: object = None) -> None:
        if counts["connected"] + sum(t.done() for t in tasks) >= len(ids):
            all_in.set()

    for task in tasks:
        task.add_done_callback(settled)
    counts_hook.append(settled)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(all_in.wait(), CONNECT_TIMEOUT * 4)
    print(json.dumps({"event": "connected", "connected": counts["connected"]}), flush=True)
    if args.wait_stdin:  # the caller starts its meters, then says go
        await asyncio.get_running_loop().run_in_executor(None, input)
    window["start"] = time.perf_counter() + 0.2
    window["end"] = window["start"] + args.seconds
    ready.set()
    began = time.perf_counter()
    await asyncio.gather(*tasks, return_exceptions=True)
    ordered = sorted(latencies)
    return {
        "connected": counts["connected"], "sent": counts["sent"], "acked": len(ordered),
        "p50_ms": 1000 * statistics.median(ordered) if ordered else -1.0,
        "p99_ms": 1000 * ordered[int(0.99 * (len(ordered) - 1))] if ordered else -1.0,
        "max_ms": 1000 * ordered[-1] if ordered else -1.0,
        "seconds": time.perf_counter() - began,
    }


def entry(args: argparse.Namespace) -> None:
    result = asyncio.run(run(args)) if not args.uvloop else _uvloop_run(args)
    print(json.dumps(result), flush=True)


def _uvloop_run(args: argparse.Namespace) -> dict[str, float]:
    import uvloop

    return uvloop.run(run(args))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("root")
    parser.add_argument("device_dir")
    parser.add_argument("first", type=int)
    parser.add_argument("count", type=int)
    parser.add_argument("--period", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--payload", type=int, default=100)
    parser.add_argument("--wait-stdin", action="store_true")
    parser.add_argument("--no-uvloop", dest="uvloop", action="store_false")
    entry(parser.parse_args())

"""Opens N device connections (TLS with each device's own cert, then CONNECT, optional SUBSCRIBE) to a
broker and holds them until stdin closes. Prints one JSON line when all are up:
{"admitted", "refused", "failed", "seconds"}.

    python -m bench.conndriver PORT ROOT DEVICE_DIR FIRST COUNT [--subscribe] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import sys
import time
from pathlib import Path

from gateway.mqtt import codec


def _context(root: str, cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=root)
    ctx.check_hostname = False
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


async def _one(port: int, ctx: ssl.SSLContext, device_id: str, subscribe: bool,
               held: list[asyncio.StreamWriter]) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="edgegateway.local")
    writer.write(codec.encode_connect(client_id=device_id, clean_session=True, keep_alive=600))
    connack = await reader.readexactly(4)
    code = connack[3]
    if code == 0 and subscribe:
        writer.write(codec.encode_subscribe(1, [(f"devices/{device_id}/messages/devicebound/#", 1)]))
        await reader.readexactly(5)
    held.append(writer)
    return code


async def main(args: argparse.Namespace) -> None:
    devices = Path(args.device_dir)
    ids = [f"dev-{i:05d}" for i in range(args.first, args.first + args.count)]
    contexts = [_context(args.root, devices / f"{d}.pem", devices / f"{d}.key") for d in ids]
    held: list[asyncio.StreamWriter] = []
    gate = asyncio.Semaphore(args.concurrency)
    results = {"admitted": 0, "refused": 0, "failed": 0}

    async def guarded(device_id: str, ctx: ssl.SSLContext) -> None:
        async with gate:
            try:
                code = await asyncio.wait_for(_one(args.port, ctx, device_id, args.subscribe, held), 30)
            except (TimeoutError, OSError, asyncio.IncompleteReadError, ssl.SSLError):
                results["failed"] += 1
                return
            results["admitted" if code == 0 else "refused"] += 1

    start = time.monotonic()
    await asyncio.gather(*(guarded(d, c) for d, c in zip(ids, contexts, strict=True)))
    results["seconds"] = round(time.monotonic() - start, 4)  # type: ignore[assignment]
    print(json.dumps(results), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for writer in held:
        writer.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("root")
    parser.add_argument("device_dir")
    parser.add_argument("first", type=int)
    parser.add_argument("count", type=int)
    parser.add_argument("--subscribe", action="store_true")
    parser.add_argument("--concurrency", type=int, default=64)
    try:  # the driver shares the cores with the broker under test: the leaner its loop, the fairer the figure
        import uvloop
    except ImportError:
        asyncio.run(main(parser.parse_args()))
    else:
        uvloop.run(main(parser.parse_args()))

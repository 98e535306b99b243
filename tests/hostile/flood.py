"""A flood of unauthenticated TLS connections: each completes the handshake with a certificate nobody
registered, sends a CONNECT, and is refused. Runs until stdin closes, then prints how many it made.

    python -m tests.hostile.flood PORT CA CERT KEY [--concurrency 50]
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import sys

from gateway.mqtt import codec


async def main(args: argparse.Namespace) -> None:
    ctx = ssl.create_default_context(cafile=args.ca)
    ctx.check_hostname = False
    ctx.load_cert_chain(args.cert, args.key)
    stop = asyncio.Event()
    made = 0
    refused = 0

    async def one(n: int) -> None:
        nonlocal made, refused
        while not stop.is_set():
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", args.port, ssl=ctx, server_hostname="edgegateway.local"), 10)
                writer.write(codec.encode_connect(client_id=f"intruder-{n}", clean_session=True, keep_alive=30))
                connack = await asyncio.wait_for(reader.readexactly(4), 10)
                refused += connack[3] != 0
                writer.close()
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ssl.SSLError):
                pass
            made += 1

    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(one(n)) for n in range(args.concurrency)]
    print("started", flush=True)
    await loop.run_in_executor(None, sys.stdin.read)
    stop.set()
    await asyncio.wait(tasks, timeout=15)
    print(f"{made} {refused}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("ca")
    parser.add_argument("cert")
    parser.add_argument("key")
    parser.add_argument("--concurrency", type=int, default=50)
    asyncio.run(main(parser.parse_args()))

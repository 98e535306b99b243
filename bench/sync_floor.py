"""The floor under "QoS 1, one publisher" for any broker that acknowledges only what is on disk.

A broker of about sixty lines, and nothing else: TLS on uvloop (Python's ssl, the bench certificates), a
PUBACK for each QoS 1 PUBLISH only once a group commit holding it has returned (an append and an
fdatasync on one worker thread; PUBLISHes that arrive during a commit wait for the next). No
authentication, no routing, no outbox index, no hub. `mosquitto_pub -l` sends to it exactly as
`make bench` sends to the three brokers, and the run prints msg/s with the commit sizes seen, so what
`mosquitto_pub`'s window does with a broker that waits for the disk can be read apart from what edgegate
costs on top.

    python -m bench.sync_floor [--publishers 1] [--messages 50000] [--runs 3] [--no-sync] [--extra-us 0] [--inline]

The floor runs as a process of its own (`python -m bench.sync_floor serve ...`, started by the above), so
its CPU is measured as the brokers' is: the process's, over the messages sent.

`--no-sync` appends without the fdatasync (the `process` durability's guarantee); `--extra-us N` holds each
commit N µs longer (a slower disk; or a broker's own work per commit); `--inline` commits on the event
loop's own thread, with no hand-off (and no reads while the disk syncs).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import signal
import ssl
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path

import uvloop

from bench.load import ensure_device_files, publish_rate, publish_rate_and_cpu
from bench.pki import BenchPKI
from bench.targets import Target


class _Committer:
    """Group commit on one thread: `submit` queues (bytes, done-callback); a commit takes everything queued."""

    def __init__(self, path: Path, sync: bool, extra: float, loop: asyncio.AbstractEventLoop, inline: bool) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.sync, self.extra, self.loop, self.inline = sync, extra, loop, inline
        self.queued: list[tuple[bytes, int, object]] = []
        self.cond = threading.Condition()
        self.sizes: collections.Counter[int] = collections.Counter()
        if not inline:
            threading.Thread(target=self._run, daemon=True).start()

    def submit(self, data: bytes, count: int, done: object) -> None:
        if self.inline:  # the commit runs on the event loop, after this iteration's reads
            if not self.queued:
                self.loop.call_soon(self._commit_inline)
            self.queued.append((data, count, done))
            return
        with self.cond:
            self.queued.append((data, count, done))
            self.cond.notify()

    def _commit_inline(self) -> None:
        batch, self.queued = self.queued, []
        self._write(batch)
        for _, _, done in batch:
            done()  # type: ignore[operator]

    def _write(self, batch: list[tuple[bytes, int, object]]) -> None:
        os.write(self.fd, b"".join(data for data, _, _ in batch))
        if self.sync:
            os.fdatasync(self.fd)
        if self.extra:
            time.sleep(self.extra)
        self.sizes[sum(count for _, count, _ in batch)] += 1

    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.queued:
                    self.cond.wait()
                batch, self.queued = self.queued, []
            self._write(batch)
            for _, _, done in batch:
                self.loop.call_soon_threadsafe(done)  # type: ignore[arg-type]


class _Device(asyncio.Protocol):
    def __init__(self, committer: _Committer) -> None:
        self.committer, self.buffer = committer, bytearray()
        self.transport: asyncio.WriteTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's SSL transport

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        acks: list[int] = []
        body = bytearray()
        while len(buf) >= 2:
            length, shift, i = 0, 0, 1
            while True:  # the remaining length (MQTT 3.1.1 §2.2.3)
                if i >= len(buf):
                    return
                byte = buf[i]
                length |= (byte & 0x7F) << shift
                shift, i = shift + 7, i + 1
                if not byte & 0x80:
                    break
            if len(buf) < i + length:
                break
            header, packet = buf[0], bytes(buf[i:i + length])
            kind = header >> 4
            del buf[:i + length]
            if kind == 1:  # CONNECT
                self._send(b"\x20\x02\x00\x00")
            elif kind == 3:  # PUBLISH
                body += packet
                if (header >> 1) & 3:
                    acks.append(struct.unpack_from("!H", packet, 2 + struct.unpack_from("!H", packet)[0])[0])
            elif kind == 12:  # PINGREQ
                self._send(b"\xd0\x00")
            elif kind == 14 and self.transport is not None:  # DISCONNECT
                self.transport.close()
        if acks:
            self.committer.submit(bytes(body), len(acks), lambda: self._send(b"".join(struct.pack("!BBH", 0x40, 2, a)
                                                                           for a in acks)))

    def _send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)


STATS_EVERY = 0.5  # how often the serving process writes its commit sizes for the driver


class _FloorTarget(Target):
    """The floor broker as a process of its own, like the brokers it is compared with."""

    def __init__(self, pki: BenchPKI, work: Path, options: list[str]) -> None:
        super().__init__("sync-floor", pki, work)
        self.options = options
        self.stats = work / "floor-stats.json"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "bench.sync_floor", "serve", "--port", str(self.port),
                "--cert", str(self.pki.server_chain), "--key", str(self.pki.server_key),
                "--stats", str(self.stats), *self.options]

    def sizes(self) -> collections.Counter[int]:
        """Commits by their number of messages, so far (as of the serving process's last write)."""
        time.sleep(2 * STATS_EVERY)
        return collections.Counter({int(k): v for k, v in json.loads(self.stats.read_text()).items()})


def serve(args: argparse.Namespace) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(args.cert, args.key)
        committer = _Committer(args.stats.with_suffix(".log"), not args.no_sync, args.extra_us / 1e6, loop,
                               args.inline)
        await loop.create_server(lambda: _Device(committer), "127.0.0.1", args.port, ssl=ctx)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        while not stop.is_set():
            tmp = args.stats.with_suffix(".tmp")
            tmp.write_text(json.dumps(dict(committer.sizes)))
            tmp.replace(args.stats)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), STATS_EVERY)

    uvloop.run(main())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--publishers", type=int, default=1)
    parser.add_argument("--no-sync", action="store_true")
    parser.add_argument("--extra-us", type=float, default=0.0)
    parser.add_argument("--inline", action="store_true", help="commit on the event loop's thread (no hand-off)")
    if sys.argv[1:2] == ["serve"]:
        parser.add_argument("serve")
        parser.add_argument("--port", type=int, required=True)
        parser.add_argument("--cert", type=Path, required=True)
        parser.add_argument("--key", type=Path, required=True)
        parser.add_argument("--stats", type=Path, required=True)
        serve(parser.parse_args())
        return
    args = parser.parse_args()
    options = [*(["--no-sync"] if args.no_sync else []), *(["--inline"] if args.inline else []),
               "--extra-us", str(args.extra_us)]
    with tempfile.TemporaryDirectory(prefix="edgegate-floor-") as tmp:
        work = Path(tmp)
        pki = BenchPKI.create(work / "pki")
        ensure_device_files(pki, args.publishers)
        publishers = list(range(args.publishers))
        target = _FloorTarget(pki, work, options)
        target.start()
        try:
            publish_rate(target, publishers, 2_000, 1)  # warm up
            for _ in range(args.runs):
                before = target.sizes()
                rate, cpu = publish_rate_and_cpu(target, publishers, args.messages, 1)
                sizes = target.sizes() - before
                commits = sum(sizes.values())
                common = ", ".join(f"{size}: {n}" for size, n in sizes.most_common(4))
                how = "no fdatasync" if args.no_sync else "fdatasync"
                how += ", on the loop" if args.inline else ", on a thread"
                if args.extra_us:
                    how += f", +{args.extra_us:.0f} µs"
                print(f"sync floor, {args.publishers} mosquitto_pub -l ({how}): {rate:,.0f} msg/s, {cpu:.1f} µs CPU "
                      f"per message, {args.messages / max(1, commits):.1f} messages per commit (commits by size: "
                      f"{common})", flush=True)
        finally:
            target.stop()


if __name__ == "__main__":
    main()

"""A TCP chaos proxy, run as its own process between the gateway and the hub.

    python -m tests.chaos.proxy --target 127.0.0.1:8443 --ready-file ready.json

It listens on a data port (forwarding to --target) and a control port that takes one-line commands
and answers `ok ...` or `error ...`:

    pass                 forward normally
    refuse               stop listening: new connections are refused (live ones are cut too)
    blackhole            accept, read and discard, never forward nor answer
    cut                  close every live connection now (mode unchanged)
    latency MS           delay every chunk by MS milliseconds in both directions
    flap UP_S DOWN_S     alternate pass (UP_S seconds) and refuse (DOWN_S seconds) until another mode
    stats                connection counts

Faults are real: refused is a closed port, blackhole is an open socket that never answers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
from pathlib import Path


class ChaosProxy:
    def __init__(self, listen_host: str, listen_port: int, target: tuple[str, int]) -> None:
        self.listen_host, self.listen_port, self.target = listen_host, listen_port, target
        self.mode = "pass"
        self.latency = 0.0
        self.server: asyncio.Server | None = None
        self.live: set[asyncio.StreamWriter] = set()
        self.accepted = 0
        self.flapper: asyncio.Task[None] | None = None

    async def listen(self) -> None:
        if self.server is None:
            self.server = await asyncio.start_server(self._client, self.listen_host, self.listen_port,
                                                     reuse_address=True)
            self.listen_port = self.server.sockets[0].getsockname()[1]

    async def unlisten(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None
        self.cut()

    def cut(self) -> int:
        n = len(self.live)
        for writer in list(self.live):
            with contextlib.suppress(Exception):
                writer.transport.abort()
        self.live.clear()
        return n

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.live.add(writer)
        try:
            if self.mode == "blackhole":
                while await reader.read(65536):
                    pass
                return
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.target)
            except OSError:
                return
            self.live.add(up_writer)
            await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer),
                                 return_exceptions=True)
        finally:
            self.live.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                if self.mode == "blackhole":
                    continue
                if self.latency:
                    await asyncio.sleep(self.latency)
                dst.write(data)
                await dst.drain()
        finally:
            self.live.discard(dst)
            with contextlib.suppress(Exception):
                dst.close()

    async def set_mode(self, mode: str) -> None:
        if self.flapper is not None:
            self.flapper.cancel()
            self.flapper = None
        self.mode = mode
        if mode == "refuse":
            await self.unlisten()
        else:
            if mode == "blackhole":
                self.cut()
            await self.listen()

    async def flap(self, up: float, down: float) -> None:
        while True:
            self.mode = "pass"
            await self.listen()
            await asyncio.sleep(up)
            self.mode = "refuse"
            await self.unlisten()
            await asyncio.sleep(down)

    async def command(self, line: str) -> str:
        words = line.split()
        if not words:
            return "error empty command"
        verb, args = words[0], words[1:]
        if verb in ("pass", "refuse", "blackhole"):
            await self.set_mode(verb)
            return f"ok {verb}"
        if verb == "cut":
            return f"ok cut {self.cut()}"
        if verb == "latency" and len(args) == 1:
            self.latency = float(args[0]) / 1000.0
            return f"ok latency {args[0]}"
        if verb == "flap" and len(args) == 2:
            await self.set_mode("pass")
            self.flapper = asyncio.get_running_loop().create_task(self.flap(float(args[0]), float(args[1])))
            return "ok flap"
        if verb == "stats":
            return f"ok mode={self.mode} live={len(self.live)} accepted={self.accepted}"
        return f"error unknown command {line.strip()!r}"


async def _serve(args: argparse.Namespace) -> None:
    host, port = args.target.rsplit(":", 1)
    proxy = ChaosProxy(args.listen_host, args.listen_port, (host, int(port)))
    await proxy.listen()

    async def control(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            writer.write((await proxy.command(line.decode()) + "\n").encode())
            await writer.drain()
        writer.close()

    control_server = await asyncio.start_server(control, "127.0.0.1", args.control_port)
    control_port = control_server.sockets[0].getsockname()[1]
    ready = {"port": proxy.listen_port, "control_port": control_port}
    if args.ready_file:
        _write_ready(Path(args.ready_file), ready)
    print(json.dumps(ready), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await proxy.unlisten()
    control_server.close()



def _write_ready(path: Path, ready: dict[str, int]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(ready))
    tmp.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", required=True, help="HOST:PORT to forward to")
    parser.add_argument("--listen-host", default="127.0.0.1")
    parser.add_argument("--listen-port", type=int, default=0)
    parser.add_argument("--control-port", type=int, default=0)
    parser.add_argument("--ready-file")
    asyncio.run(_serve(parser.parse_args()))


if __name__ == "__main__":
    main()

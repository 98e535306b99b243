"""A real front door (real TLS socket, real amqtt) in a background thread, for tests that drive it
with real clients (paho, mosquitto_pub, openssl s_client). Its directory is a dict the test fills
and its sink an in-memory list: the cache and the outbox have their own tests.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from gateway.auth.decision import AuthPolicy
from gateway.broker.port import BrokerPort
from gateway.frontdoor.server import FrontDoor, FrontDoorLimits
from gateway.pki import CA, IssuedCert
from gateway.records import DeviceRecord, InboundMessage, Submission, TrustAnchors
from gateway.tls.contexts import ServerContextHolder

HOSTNAME = "edgegateway.local"


class DictDirectory:
    def __init__(self, gateway_id: str, anchors: TrustAnchors, records: Iterable[DeviceRecord]) -> None:
        self.gateway_id, self.anchors = gateway_id, anchors
        self.records = {r.device_id: r for r in records}

    def lookup(self, device_id: str) -> DeviceRecord | None:
        return self.records.get(device_id)

    async def lookup_or_fetch(self, device_id: str) -> DeviceRecord | None:
        return self.records.get(device_id)

    def auth_policy(self) -> AuthPolicy:
        return AuthPolicy(self.gateway_id, self.anchors, timedelta(minutes=5))


@dataclass
class ListSink:
    messages: list[InboundMessage] = field(default_factory=list)
    fail: bool = False

    def submit(self, message: InboundMessage) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.fail:
            fut.set_exception(RuntimeError("disk full (test)"))
        else:
            self.messages.append(message)
            fut.set_result(None)
        return fut

    def submit_many(self, messages: Sequence[InboundMessage]) -> Submission:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.fail:
            fut.set_exception(RuntimeError("disk full (test)"))
        else:
            self.messages.extend(messages)
            fut.set_result(None)
        return Submission(fut, len(messages))


@dataclass
class GatewayPKI:
    """root -> intermediate -> Edge CA -> server cert for HOSTNAME: the seed article's chain."""

    root: CA
    intermediate: CA
    edge_ca: CA
    server: IssuedCert
    root_path: Path
    chain_path: Path
    key_path: Path

    @classmethod
    def create(cls, directory: Path, hostname: str = HOSTNAME, *alt: str) -> GatewayPKI:
        root = CA.create_root("Gateway Private Root")
        inter = root.create_child_ca("Gateway Intermediate", path_length=1)
        edge = inter.create_child_ca("Edge CA", path_length=0)
        server = edge.issue_server_cert(hostname, *alt)
        directory.mkdir(parents=True, exist_ok=True)
        root_path = root.cert_pem.write_to_path(directory / "root.pem")
        chain_path = server.fullchain_pem().write_to_path(directory / "server.pem")
        key_path = server.private_key_pem.write_to_path(directory / "server.key", private=True)
        return cls(root, inter, edge, server, root_path, chain_path, key_path)


class FrontDoorThread:
    """Start with `with FrontDoorThread(...) as gw:`; `gw.port` is the TLS port."""

    def __init__(self, tmp: Path, directory: DictDirectory, *, limits: FrontDoorLimits | None = None,
                 clock: Any = None) -> None:
        self.pki = GatewayPKI.create(tmp / "gateway-pki")
        self.directory = directory
        self.sink = ListSink()
        self.limits = limits or FrontDoorLimits()
        self.clock = clock or (lambda: datetime.now(UTC))
        self.port = 0
        self.loop = asyncio.new_event_loop()
        self.door: FrontDoor | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._error: BaseException | None = None

    def __enter__(self) -> FrontDoorThread:
        self._thread.start()
        if not self._ready.wait(20):
            raise RuntimeError("front door did not start")
        if self._error:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(15)

    def thread_alive(self) -> bool:
        return self._thread.is_alive() and self._error is None

    def call(self, fn: Any, *args: Any) -> Any:
        """Run `fn(*args)` on the gateway's loop and return its result."""
        async def run() -> Any:
            return fn(*args)
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(30)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._main())
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        broker = BrokerPort()
        await broker.start()
        self.broker = broker
        contexts = ServerContextHolder(self.pki.chain_path, self.pki.key_path)
        self.contexts = contexts
        self.door = FrontDoor(contexts=contexts, directory=self.directory, sink=self.sink, port=broker,
                              limits=self.limits, clock=self.clock)
        (_, self.port), *_ = await self.door.start("127.0.0.1", 0)
        self._stop = asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        await self.door.stop()
        await broker.stop()

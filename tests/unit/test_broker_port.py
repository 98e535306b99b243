"""BrokerPort with real amqtt behind it, driven as the front door drives it: sessions are opened with a
re-encoded CONNECT, fed authorized bytes, and write whole packets back."""

from __future__ import annotations

import asyncio

import pytest

from gateway.broker.port import BrokerPort
from gateway.mqtt import codec
from gateway.mqtt.packets import PacketType


class Output:
    """What a device connection would be to its broker session: it collects the packets."""

    def __init__(self) -> None:
        self.packets: list[bytes] = []
        self.closed = False

    def send(self, data: bytes) -> None:
        self.packets.append(data)

    def drain_waiter(self) -> asyncio.Future[None] | None:
        return None

    def broker_closed(self) -> None:
        self.closed = True

    def types(self) -> list[int]:
        return [p[0] >> 4 for p in self.packets]


async def until(predicate: object, seconds: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not predicate():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def open_device(port: BrokerPort, device_id: str, filters: list[str], *, clean: bool = False) -> Output:
    out = Output()
    link = port.attach(device_id, clean, out, ("127.0.0.1", 1))
    await until(lambda: PacketType.CONNACK in out.types())
    if filters:
        link.forward(codec.encode_subscribe(1, [(f, 1) for f in filters]))
        await until(lambda: PacketType.SUBACK in out.types())
    return out


@pytest.mark.asyncio
async def test_connack_comes_from_the_broker_and_c2d_reaches_the_subscriber() -> None:
    port = BrokerPort()
    await port.start()
    try:
        out = await open_device(port, "dev-a", ["devices/dev-a/messages/devicebound/#"])
        assert port.filters_held("dev-a") == 1
        await port.deliver("devices/dev-a/messages/devicebound/", b"hello", 1)
        await until(lambda: PacketType.PUBLISH in out.types())
    finally:
        await port.stop()


@pytest.mark.asyncio
async def test_stop_ends_a_session_still_attached_instead_of_waiting_it_out() -> None:
    # The front door closes its links before the broker stops; if its own stop failed, the broker's
    # stop still ends each session as a device leaving would (end-of-stream), not by cancelling it
    # after a 5 s wait.
    port = BrokerPort()
    port.stop_grace = 600  # waited out, it would outlast the wait_for below
    await port.start()
    await open_device(port, "dev-a", ["devices/dev-a/messages/devicebound/#"])
    assert port.sessions_running == 1
    await asyncio.wait_for(port.stop(), 60)
    assert port.sessions_running == 0


@pytest.mark.asyncio
async def test_a_connect_offers_retained_messages_for_its_own_filters_only() -> None:
    port = BrokerPort()
    await port.start()
    offered: list[tuple[str, str | None]] = []
    broker = port.broker
    original = broker._publish_retained_messages_for_subscription

    async def counting(subscription: tuple[str, int], session: object) -> None:
        offered.append((subscription[0], getattr(session, "client_id", None)))
        await original(subscription, session)  # type: ignore[arg-type]

    broker._publish_retained_messages_for_subscription = counting  # type: ignore[method-assign]
    try:
        for n in range(20):
            await open_device(port, f"dev-{n}", [f"devices/dev-{n}/messages/devicebound/#"])
        await broker.retain_message(None, "devices/dev-0/messages/devicebound/x", b"kept", 1)
        offered.clear()
        await open_device(port, "dev-new", [])
        assert offered == []  # amqtt itself walks all 20 filters here
    finally:
        await port.stop()


@pytest.mark.asyncio
async def test_a_leftover_clean_session_is_forgotten_before_a_persistent_connect() -> None:
    port = BrokerPort()
    await port.start()
    try:
        out = Output()
        link = port.attach("dev-c", True, out, ("127.0.0.1", 1))
        await until(lambda: PacketType.CONNACK in out.types())
        link.close()
        await until(lambda: not port.broker._sessions["dev-c"][0].transitions.is_connected())
        assert port.has_leftover_clean_session("dev-c", clean_session=False)
        assert not port.has_leftover_clean_session("dev-c", clean_session=True)
        await port.forget_session("dev-c")
        assert not port.has_leftover_clean_session("dev-c", clean_session=False)
    finally:
        await port.stop()


@pytest.mark.asyncio
async def test_the_broadcast_loop_is_supervised_and_outlives_a_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    """amqtt runs its broadcast loop as a bare task: one exception and no cloud-to-device message is ever
    delivered again. Under the supervisor it is counted, shown, and started again."""
    import gateway.service.supervisor as supervisor_module

    monkeypatch.setattr(supervisor_module, "RETRY_BASE", 0.01)
    port = BrokerPort()
    await port.start()
    try:
        out = await open_device(port, "dev-a", ["devices/dev-a/messages/devicebound/#"])
        real, calls = port.broker._run_broadcast, []

        async def broken_once(running_tasks: object) -> None:
            calls.append(1)
            if len(calls) == 1:
                await port.broker._broadcast_queue.get()
                raise RuntimeError("injected bug")
            await real(running_tasks)  # type: ignore[arg-type]

        monkeypatch.setattr(port.broker, "_run_broadcast", broken_once)
        # The loop already waits inside the real `_run_broadcast`: the first message goes through it,
        # the second meets the injected bug.
        await port.deliver("devices/dev-a/messages/devicebound/", b"first", 1)
        await until(lambda: any(b"first" in p for p in out.packets))
        await port.deliver("devices/dev-a/messages/devicebound/", b"lost", 1)
        health = port.supervisor.health["broker-broadcast"]
        await until(lambda: health.failures == 1)
        assert health.last_error == "RuntimeError: injected bug"
        await port.deliver("devices/dev-a/messages/devicebound/", b"after", 1)
        await until(lambda: any(b"after" in p for p in out.packets))
        assert port.supervisor.health["broker-session-expiry"].failures == 0
    finally:
        await port.stop()
    assert port.supervisor.health["broker-broadcast"].state.value == "stopped"


@pytest.mark.asyncio
async def test_a_persistent_session_taken_over_while_connected_still_gets_cloud_to_device() -> None:
    port = BrokerPort()
    await port.start()
    try:
        topic = "devices/dev-a/messages/devicebound/#"
        first = await open_device(port, "dev-a", [topic])
        second = await open_device(port, "dev-a", [topic])  # the same id, while the first is connected
        await until(lambda: first.closed)
        await port.deliver("devices/dev-a/messages/devicebound/", b"after the takeover", 1)
        await until(lambda: PacketType.PUBLISH in second.types())
        assert PacketType.PUBLISH not in first.types()
        assert port.filters_held("dev-a") == 1
    finally:
        await port.stop()

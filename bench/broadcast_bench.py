"""Cloud-to-device routing benchmark (not a test): the broker's cost to route one broadcast to its one
subscriber, with every device subscribed to its own devicebound topic, for plain amqtt 0.12.1's Broker
and edgegate's EdgeBroker, in process (no sockets: routing only).

    .venv/bin/python -m bench.broadcast_bench [--sizes 1000 10000 100000] [--messages 500]

Subscribers are offline persistent sessions, so each routed message is queued on its session: the
routing and queueing work, without a device's socket in the figure.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import deque

from amqtt.broker import Broker
from amqtt.session import Session

from gateway.broker.admission import AdmissionTokens
from gateway.broker.edge_broker import EdgeBroker
from gateway.broker.port import broker_config


def topic_filter(i: int) -> str:
    return f"devices/dev-{i:06d}/messages/devicebound/#"


async def ms_per_message(broker_class: type[Broker], devices: int, messages: int) -> float:
    broker = broker_class(broker_config(AdmissionTokens()))
    for i in range(devices):
        session = Session()
        session.client_id, session.clean_session = f"dev-{i:06d}", False
        await broker.add_subscription((topic_filter(i), 1), session)
    start = time.perf_counter()
    for k in range(messages):
        await broker.internal_message_broadcast(f"devices/dev-{k % devices:06d}/messages/devicebound/%24.to=x", b"x", 1)
        await broker._run_broadcast(deque())
    return (time.perf_counter() - start) / messages * 1000


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.broadcast_bench")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000])
    parser.add_argument("--messages", type=int, default=500)
    args = parser.parse_args()
    print("| subscribed devices | amqtt ms/message | edgegate ms/message | amqtt / edgegate |")
    print("|---|---|---|---|")
    for devices in args.sizes:
        amqtt = asyncio.run(ms_per_message(Broker, devices, args.messages))
        edge = asyncio.run(ms_per_message(EdgeBroker, devices, args.messages))
        print(f"| {devices:,} | {amqtt:.3f} | {edge:.4f} | {amqtt / edge:,.0f}× |", flush=True)


if __name__ == "__main__":
    main()

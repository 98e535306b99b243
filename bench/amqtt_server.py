"""Plain amqtt 0.12.1 with its built-in TLS listener: the baseline edgegate is measured against.

    python -m bench.amqtt_server PORT CERTFILE KEYFILE CAFILE
"""

from __future__ import annotations

import asyncio
import sys

from amqtt.broker import Broker


async def main(port: int, certfile: str, keyfile: str, cafile: str) -> None:
    config = {
        "listeners": {
            "default": {
                "type": "tcp",
                "bind": f"127.0.0.1:{port}",
                "ssl": True,
                "certfile": certfile,
                "keyfile": keyfile,
                "cafile": cafile,
                "max_connections": 20000,
            }
        },
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }
    broker = Broker(config)
    await broker.start()
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), *sys.argv[2:5]))

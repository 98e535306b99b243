"""Big fleets for the limits tests: many self-signed devices registered in a real hub-mock, fast (the
registrations go out on a few threads), and what the hub received, read back in pages."""

from __future__ import annotations

import base64
import json
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from gateway.pki import self_signed_device_cert
from tests.clients import DeviceFiles
from tests.gatewayproc import GATEWAY_ID
from tests.hubproc import HubProcess


def make_big_fleet(hub: HubProcess, directory: Path, count: int, prefix: str = "fleet") -> list[str]:
    def one(i: int) -> str:
        device_id = f"{prefix}-{i:05d}"
        cert = self_signed_device_cert(device_id)
        hub.admin.add_device(device_id, parent=GATEWAY_ID, thumbprint=cert.thumbprint_sha256)
        DeviceFiles.write(cert, directory, device_id)
        return device_id

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(count)))


def hub_readings(hub: HubProcess) -> dict[str, list[int]]:
    """device id -> the seq of every reading the hub holds from it, in arrival order."""
    out: dict[str, list[int]] = defaultdict(list)
    after = 0
    while True:
        page = hub.admin.messages(None, after=after, limit=1000)
        for m in page["messages"]:
            out[m["device_id"]].append(int(json.loads(base64.b64decode(m["payload_b64"]))["seq"]))
        if not page.get("next"):
            return out
        after = page["next"]

"""TempSensor's pure parts: the TLS diagnosis sentences and the readings."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from devices.diagnose import diagnose
from devices.readings import first_reading, next_reading
from gateway.pki import CA

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
ROOT = CA.create_root("Gateway Root", now=NOW - timedelta(days=10))
EDGE = ROOT.create_child_ca("Edge CA", now=NOW - timedelta(days=10))
SERVER = EDGE.issue_server_cert("edgegateway.local", "10.0.0.5", now=NOW - timedelta(days=1))
OTHER_ROOT = CA.create_root("Someone Else", now=NOW - timedelta(days=10))
CHAIN = [SERVER.cert, EDGE.cert]


@pytest.mark.parametrize(
    ("dialled", "chain", "roots", "now", "expected"),
    [
        ("edgegateway.local", CHAIN, [ROOT.cert], NOW, "the gateway's certificate and chain are fine"),
        ("10.0.0.5", CHAIN, [ROOT.cert], NOW, "the gateway's certificate and chain are fine"),
        ("EdgeGateway.Local", CHAIN, [ROOT.cert], NOW, "the gateway's certificate and chain are fine"),
        ("other.local", CHAIN, [ROOT.cert], NOW,
         "the gateway's certificate is for edgegateway.local, 10.0.0.5, you dialled other.local"),
        ("edgegateway.local", CHAIN, [OTHER_ROOT.cert], NOW,
         "the gateway's chain does not lead to a root in ca-file"),
        ("edgegateway.local", [SERVER.cert], [ROOT.cert], NOW,
         "the gateway's chain does not lead to a root in ca-file"),
        ("edgegateway.local", CHAIN, [ROOT.cert], NOW + timedelta(days=400), "the gateway's certificate expired"),
        ("edgegateway.local", CHAIN, [ROOT.cert], NOW - timedelta(days=5), "check this device's clock"),
        ("edgegateway.local", [], [ROOT.cert], NOW, "the gateway presented no certificate"),
    ],
)
def test_diagnosis(dialled: str, chain: list, roots: list, now: datetime, expected: str) -> None:  # type: ignore[type-arg]
    assert expected in diagnose(dialled, chain, roots, now)


def test_readings_walk_within_bounds_and_count_up() -> None:
    reading = first_reading(NOW, 0.5)
    for i in range(1000):
        reading = next_reading(reading, NOW + timedelta(seconds=i), 1.0, 1.0)
    assert reading.seq == 1001
    assert reading.temperature <= 45.0
    assert reading.humidity <= 95.0
    body = json.loads(reading.to_json())
    assert set(body) == {"temperature", "humidity", "seq", "ts"}
    assert body["ts"].endswith("Z")

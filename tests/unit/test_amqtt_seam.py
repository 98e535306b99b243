"""amqtt sits behind one seam: one module imports it, the rest of the gateway reaches the broker only
through gateway.broker.port, and the front door's core needs no event loop, TLS library or broker."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.broker.amqtt_surface import AMQTT_VERSION, check_version
from gateway.errors import EdgegateError

ROOT = Path(__file__).resolve().parents[2]
GATEWAY = ROOT / "gateway"


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_amqtt_is_imported_by_exactly_one_module() -> None:
    importers = sorted(
        str(path.relative_to(ROOT)) for path in GATEWAY.rglob("*.py")
        if any(name.split(".")[0] == "amqtt" for name in imported_modules(path))
    )
    assert importers == ["gateway/broker/amqtt_surface.py"]


def test_outside_the_broker_package_only_the_port_is_used() -> None:
    reaching_in = {
        str(path.relative_to(ROOT)): sorted(name for name in imported_modules(path)
                                            if name.startswith("gateway.broker") and name != "gateway.broker.port")
        for path in GATEWAY.rglob("*.py") if "broker" not in path.relative_to(GATEWAY).parts
    }
    assert {k: v for k, v in reaching_in.items() if v} == {}


def test_the_front_door_core_loads_no_event_loop_tls_library_or_broker() -> None:
    # Transitively, in a fresh interpreter: what the session imports, all the way down.
    probe = ("import sys, gateway.frontdoor.session, gateway.frontdoor.events; "
             "print(' '.join(m for m in ('asyncio', 'OpenSSL', 'sqlalchemy', 'aiohttp', 'amqtt') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == []


def test_another_amqtt_version_is_refused_with_a_sentence() -> None:
    check_version(AMQTT_VERSION)
    with pytest.raises(EdgegateError) as info:
        check_version("0.11.0")
    assert "amqtt 0.11.0 is installed" in str(info.value)
    assert f"amqtt=={AMQTT_VERSION}" in str(info.value)

"""The core/shell contract (STYLE.md habit 1): decision code imports no I/O and never reads the clock."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORE = sorted([
    *(ROOT / "gateway" / "auth").glob("*.py"),
    *(ROOT / "gateway" / "mqtt").glob("*.py"),
    *(ROOT / "gateway" / "frontdoor" / name for name in ("session.py", "events.py", "limits.py", "states.py")),
    ROOT / "gateway" / "outbox" / "bounds.py",
    ROOT / "gateway" / "ratelimit.py",
    ROOT / "gateway" / "broker" / "filter_index.py",
    ROOT / "gateway" / "twin" / "documents.py",
    ROOT / "devices" / "twin.py",
])
FORBIDDEN = ("asyncio", "socket", "ssl", "OpenSSL", "sqlalchemy", "aiohttp", "amqtt", "time")


@pytest.mark.parametrize("path", CORE, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_core_module_is_pure(path: Path) -> None:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        else:
            if isinstance(node, ast.Attribute) and node.attr in ("now", "utcnow", "today"):
                raise AssertionError(f"{path.name} reads the clock ({ast.unparse(node)})")
            continue
        for name in names:
            assert name.split(".")[0] not in FORBIDDEN, f"{path.name} imports {name}"

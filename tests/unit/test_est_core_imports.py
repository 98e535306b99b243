"""The EST decisions are pure (STYLE.md habit 1): no I/O imports, no clock reads, in the gateway's
pieces and in hub-mock's EST policy, CA and hub acceptance."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PURE = [ROOT / "gateway" / "est" / name for name in ("csr.py", "pkcs7.py", "schedule.py", "issued.py")] + [
    ROOT / "hub_mock" / name for name in ("est_policy.py", "est_ca.py", "est_auth.py")]
FORBIDDEN = ("asyncio", "socket", "ssl", "OpenSSL", "sqlalchemy", "aiohttp", "amqtt", "time")


@pytest.mark.parametrize("path", PURE, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_est_decision_module_is_pure(path: Path) -> None:
    for node in ast.walk(ast.parse(path.read_text())):
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

"""The long-running gateway process stays lean: what importing it must not load."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(("prefix", "why"), [
    ("aiohttp", "~10 MiB of idle RSS; only hub_mock (another process) serves with it"),
    ("sqlalchemy.dialects.postgresql", "4 MiB on every SQLite gateway; imported where a PostgreSQL engine is used"),
    ("alembic", "migrations run in a short-lived child (gateway.db.migrate)"),
    ("prometheus_client", "2 MiB; imported only when a [health] listener serves /metrics"),
])
def test_the_gateway_process_does_not_import(prefix: str, why: str) -> None:
    code = ("import sys, gateway.runtime, gateway.cli.main; "
            f"print(sorted(m for m in sys.modules if m == {prefix!r} or m.startswith({prefix + '.'!r})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", why

"""The long-running gateway process stays lean: what importing it must not load."""

from __future__ import annotations

import subprocess
import sys


def test_the_gateway_process_does_not_import_aiohttp() -> None:
    """aiohttp costs ~10 MiB of idle RSS; only hub_mock (another process) serves with it."""
    code = "import sys, gateway.runtime, gateway.cli.main; print(sorted(m for m in sys.modules if 'aiohttp' in m))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
